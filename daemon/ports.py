"""The daemon's MIDI input and output, kept connected by name.

python-rtmidi does the I/O (ALSA by default, JACK on request); mido parses and builds the
messages. A port given by name is matched by substring against the live port list and
re-matched the same way when it comes back (never by index: ALSA client numbers change).
RtMidi gives no disconnect signal, so `watch()` polls the port list. Without any MIDI subsystem
(no ALSA sequencer, no JACK server) `open()` raises MidiUnavailable with the reason, and
`watch()` retries with backoff.

Incoming messages are read by one thread of our own and handed to the event loop through a
bounded buffer (daemon/midi_input.py); malformed ones are counted there and reported once per
watch tick. What any ports object offers the daemon is stated in daemon/port_contract.py.

Under JACK, `watch()` also keeps named ports patched (a connection removed in a patchbay is
made again, and the state says what is really connected) and guards the input against an
unterminated sysex (`SysexGuard`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time

import mido
import rtmidi

from daemon import jack_patchbay
from daemon.clock import now
from daemon.jack_server import jack_running
from daemon.midi_input import PROBES_IN_FLIGHT, RTMIDI_QUEUE, SYSEX_END, InputBuffer, InputPoller
from daemon.port_contract import EventSink, PortStatus, Receiver

log = logging.getLogger("antiphon.ports")

APIS = {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK}
API_LABELS = {"alsa": "the ALSA sequencer", "jack": "the JACK server"}
WATCH_INTERVAL_S = 0.5
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# JACK sends what a client wrote at its next process cycle: a port closed sooner loses it.
JACK_DRAIN_S = 0.1
JACK_PROBE_EVERY = 10  # port-list polls between checks that the JACK server is still there
JACK_PROBE_TIMEOUT_S = 5.0
CONNECTION_CHECK_EVERY = 2  # port-list polls between checks of the JACK connections
GUARD_PORT = "sysex-guard"  # the SysexGuard's output port, on the watch client


class MidiUnavailable(Exception):
    """No MIDI subsystem to talk to; the message says which and why."""


def _client(kind: type, api: str, name: str):
    try:
        if kind is rtmidi.MidiIn:
            return kind(APIS[api], name, queue_size_limit=RTMIDI_QUEUE)
        return kind(APIS[api], name)
    except rtmidi.SystemError as error:
        raise MidiUnavailable(f"{API_LABELS[api]} is not available ({error})") from None


def list_ports(api: str, client_name: str = "antiphon-list") -> tuple[list[str], list[str]]:
    """(ports one can listen to, ports one can play to) right now; raises MidiUnavailable."""
    midi_in, midi_out = _client(rtmidi.MidiIn, api, client_name), _client(rtmidi.MidiOut, api, client_name)
    try:
        return midi_in.get_ports(), midi_out.get_ports()
    finally:
        midi_in.delete()
        midi_out.delete()


def find_port(names: list[str], wanted: str, exclude: set[str] = frozenset()) -> str | None:
    """The first port whose name contains `wanted` (case-insensitive), ours excluded."""
    for name in names:
        if wanted.lower() in name.lower() and name not in exclude:
            return name
    return None


async def jack_server_answers() -> bool:
    """Whether the JACK server (JACK_DEFAULT_SERVER's, or the default) still answers.

    Asked by `jack_wait -c` in a child process: opening a JACK client in this process holds the
    GIL for ~25 ms (measured), which the event loop would play as a late note. Without
    jack_wait (a JACK install without its tools) the client is opened here after all."""
    tool = shutil.which("jack_wait")
    if tool is None:
        return jack_running()
    process = await asyncio.create_subprocess_exec(tool, "-c", stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        answer, _ = await asyncio.wait_for(process.communicate(), JACK_PROBE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        return False
    return answer.strip() == b"running"


class SysexGuard:
    """Keeps one unterminated sysex from deafening a JACK input.

    RtMidi's JACK input appends every event after a sysex start without its end (`F0 01 02`)
    to that sysex and delivers nothing until some event happens to end in F7, ignored sysex or
    not: one stray event silences the player for good. An event `<n> F7` ends such a sysex,
    and otherwise comes back as itself (InputPoller keeps the n and drops the event). So every
    watch tick a numbered probe is sent into our own input port from a port of the watch client.
    JACK keeps the order of one port's events: a probe that did not come back while a later one
    did ended a stuck sysex (or, rarely, was lost with a cycle JACK dropped), which `tick()`
    reports; no timing is assumed. (ALSA is not affected: its RtMidi backend drops an ignored
    sysex before it can continue one.)"""

    def __init__(self, probe: rtmidi.MidiOut, poller: InputPoller) -> None:
        self.probe = probe
        self.poller = poller
        self.armed = False  # the probe port is connected to our input port
        self._in_flight: list[int] = []  # numbers sent, oldest first, not seen back yet
        self._number = 0

    def arm(self) -> None:
        """The probe port is connected (again): what was sent before may never have arrived."""
        self.armed = True
        self._in_flight.clear()

    def disarm(self) -> None:
        self.armed = False
        self._in_flight.clear()

    def tick(self) -> bool:
        """Judge the probes seen back and send the next; True when an earlier one was swallowed."""
        stuck = False
        while self.poller.probes_back:
            number = self.poller.probes_back.popleft()
            if number in self._in_flight:
                earlier = self._in_flight.index(number)
                stuck = stuck or earlier > 0
                del self._in_flight[:earlier + 1]
        if self.armed:
            self._number = (self._number + 1) % 128
            self._in_flight = [*self._in_flight[-(PROBES_IN_FLIGHT - 1):], self._number]
            self.probe.send_message([self._number, SYSEX_END])
        return stuck


class MidiPorts:
    """One input and one output: by name (substring) or virtual (`<client>:in`, `<client>:out`)."""

    def __init__(
        self,
        api: str,
        client_name: str,
        input_name: str,
        output_name: str,
        receive: Receiver,
        on_event: EventSink,
    ) -> None:
        self.api = api
        self.client_name = client_name
        self.receive = receive
        self.on_event = on_event
        # A side not given by name gets a virtual port (--virtual says so explicitly; it is also
        # the default, so `antiphon run` alone is usable by others).
        self.input = PortStatus(input_name or f"{client_name}:in")
        self.output = PortStatus(output_name or f"{client_name}:out")
        self.input_virtual = not input_name
        self.output_virtual = not output_name
        self.available = False
        self.reason = ""
        self._in: rtmidi.MidiIn | None = None
        self._out: rtmidi.MidiOut | None = None
        self._lister: tuple[rtmidi.MidiIn, rtmidi.MidiOut] | None = None
        self._buffer: InputBuffer | None = None
        self._poller: InputPoller | None = None
        self._send_lock = threading.Lock()
        self._last_send = float("-inf")
        self._polls = 0
        self._abandoned: list = []
        self._guard: SysexGuard | None = None
        self._malformed_reported = 0

    @property
    def dropped(self) -> int:
        return self._buffer.dropped if self._buffer else 0

    @property
    def malformed(self) -> int:
        return self._buffer.malformed if self._buffer else 0

    def status(self) -> dict:
        return {"in": self.input.as_dict(), "out": self.output.as_dict()}

    # -- lifecycle --------------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open both sides; raises MidiUnavailable when there is no MIDI subsystem (`reason` says why).

        A named port that does not exist yet is not an error: it is connected when it appears."""
        try:
            self._open(loop)
        except MidiUnavailable as error:
            self.reason = str(error)
            raise

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._buffer = InputBuffer(loop, self.receive)
        self.close()
        self._lister = (_client(rtmidi.MidiIn, self.api, f"{self.client_name}-watch"),
                        _client(rtmidi.MidiOut, self.api, f"{self.client_name}-watch"))
        self._in = _client(rtmidi.MidiIn, self.api, self.client_name)
        self._out = _client(rtmidi.MidiOut, self.api, self.client_name)
        # Sysex and active sensing stop here; clock and start/stop go on to the clock follower.
        self._in.ignore_types(sysex=True, timing=False, active_sense=True)
        if self.input_virtual:
            self._in.open_virtual_port("in")
        if self.output_virtual:
            self._out.open_virtual_port("out")
        self._poller = InputPoller(self._buffer.put, self._in)
        if self.api == "jack":
            self._lister[1].open_virtual_port(GUARD_PORT)
            self._guard = SysexGuard(self._lister[1], self._poller)
        self.available, self.reason = True, ""
        self._refresh(announce=False)

    def close(self) -> None:
        self._stop_polling()
        if self.api == "jack" and self._out is not None:
            time.sleep(max(0.0, self._last_send + JACK_DRAIN_S - now()))
        for port in (self._in, self._out, *(self._lister or ())):
            if port is not None:
                try:
                    port.close_port()
                    port.delete()
                except Exception as error:  # already gone with its server
                    log.debug("closing a port: %s", error)
        self._in = self._out = self._lister = self._guard = None
        self.input.connected = self.output.connected = False
        self.available = False

    def _abandon(self) -> None:
        """Forget the clients of a server that died without touching them: libjack has already
        freed them, and closing or deleting them then crashes the process. Kept referenced so
        the garbage collector never closes them either (a few objects per outage)."""
        self._stop_polling()
        self._abandoned.extend(p for p in (self._in, self._out, *(self._lister or ())) if p is not None)
        self._in = self._out = self._lister = self._guard = None
        self.input.connected = self.output.connected = False
        self.available = False

    def send(self, message: mido.Message) -> None:
        out = self._out
        if out is None or not self.output.connected:
            return
        with self._send_lock:
            out.send_message(message.bytes())
            self._last_send = now()

    async def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Poll the port lists forever: reconnect by name; reopen everything after a MIDI outage."""
        backoff = BACKOFF_FIRST_S
        while True:
            if not self.available:
                reported = self.reason
                try:
                    self.open(loop)
                except MidiUnavailable as error:
                    if self.reason != reported:
                        log.warning("MIDI unavailable: %s; retrying with backoff", error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                log.info("MIDI available again (%s)", self.api)
                self.on_event({"type": "midi_available"})
                backoff = BACKOFF_FIRST_S
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                if self.api == "jack":
                    self._polls += 1
                    if self._polls % JACK_PROBE_EVERY == 0 and not await jack_server_answers():
                        raise MidiUnavailable("it stopped answering")
                self._refresh(announce=True)
                if self.api == "jack":
                    if self._polls % CONNECTION_CHECK_EVERY == 0:
                        await self._keep_connections()
                    self._guard_input()
                self._report_malformed()
            except Exception as error:  # the server went away under us
                self.reason = f"{API_LABELS[self.api]} went away ({error})"
                log.warning("MIDI lost: %s", self.reason)
                self._abandon()
                self.on_event({"type": "midi_lost", "reason": self.reason})

    # -- internals --------------------------------------------------------------------
    def _report_malformed(self) -> None:
        """Once per tick, not once per message: a flood of garbage must not flood the log."""
        malformed = self.malformed
        if malformed == self._malformed_reported:
            return
        data, error = self._buffer.last_malformed
        log.warning("MIDI input: dropped %d malformed message(s) (the latest: %s, %s)",
                    malformed - self._malformed_reported, data.hex(" ") or "empty", error)
        self._malformed_reported = malformed
        self.on_event({"type": "input_malformed", "count": malformed})

    def _guard_input(self) -> None:
        guard = self._guard
        if guard is None:
            return
        if not self.input.connected:
            guard.disarm()
        elif guard.tick():
            reason = "an unterminated sysex (F0 without F7) was swallowing every message after it"
            log.warning("MIDI input %r reset: %s", self.input.full_name, reason)
            self.on_event({"type": "input_reset", "port": "input", "name": self.input.full_name, "reason": reason})

    async def _keep_connections(self) -> None:
        """Make again the connections a patchbay removed (named ports), and the guard's."""
        guard = self._guard
        ports = await jack_patchbay.connections(self.client_name)
        if ports is None or guard is None or guard is not self._guard:  # no tools or no server; or reopened
            return
        own = {name: linked for name, linked in ports.items() if self._is_own(name)}
        our_input = self.input.full_name if self.input_virtual else _own_port(own, ":input")
        our_output = _own_port(own, ":output")
        if not self.input_virtual and self.input.connected and our_input:
            await self._keep(self.input, "input", self.input.full_name, our_input, own)
        if not self.output_virtual and self.output.connected and our_output:
            await self._keep(self.output, "output", our_output, self.output.full_name, own)
        probe = _own_port(own, f":{GUARD_PORT}")
        if probe is None or our_input not in own or not self.input.connected:
            guard.disarm()
        elif probe in own[our_input]:
            if not guard.armed:
                guard.arm()
        else:
            guard.disarm()
            if await jack_patchbay.connect(probe, our_input):
                guard.arm()

    async def _keep(self, status: PortStatus, side: str, source: str, destination: str,
                    own: dict[str, list[str]]) -> None:
        ours, theirs = (destination, source) if side == "input" else (source, destination)
        if theirs in own.get(ours, ()):
            if not status.patched:
                status.patched = True
                self.on_event({"type": "state"})
            return
        restored = await jack_patchbay.connect(source, destination)
        if restored:
            log.warning("MIDI %s connection %s -> %s was removed; restored", side, source, destination)
            self.on_event({"type": "connection_restored", "port": side, "name": status.full_name})
        elif status.patched:
            log.warning("MIDI %s connection %s -> %s was removed and cannot be made again; retrying",
                        side, source, destination)
            self.on_event({"type": "connection_lost", "port": side, "name": status.full_name})
        status.patched = restored

    def _is_own(self, name: str) -> bool:
        client = name.split(":", 1)[0]
        return client == self.client_name or client.startswith(f"{self.client_name}-")

    def _stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def _listing(self) -> tuple[list[str], list[str]]:
        assert self._lister is not None
        sources, destinations = self._lister[0].get_ports(), self._lister[1].get_ports()
        if self.api == "jack":
            # A client of a JACK server that died keeps listing stale names: our own virtual
            # ports vanishing gives it away (and watch() asks the server now and then).
            own_gone = (self.input_virtual and self.input.full_name and self.input.full_name not in destinations) or (
                self.output_virtual and self.output.full_name and self.output.full_name not in sources)
            if own_gone:
                _client(rtmidi.MidiOut, self.api, f"{self.client_name}-probe").delete()
        return sources, destinations

    def _refresh(self, announce: bool) -> None:
        sources, destinations = self._listing()
        own = self._own_ports(sources, destinations)
        if self.input_virtual:
            self.input.connected = True
            self.input.full_name = next((n for n in destinations if n in own), self.input.name)
        else:
            self._follow(self.input, self._in, sources, own, "input", announce)
        if self.output_virtual:
            self.output.connected = True
            self.output.full_name = next((n for n in sources if n in own), self.output.name)
        else:
            self._follow(self.output, self._out, destinations, own, "output", announce)

    def _own_ports(self, sources: list[str], destinations: list[str]) -> set[str]:
        return {name for name in (*sources, *destinations) if self._is_own(name)}

    def _follow(self, status: PortStatus, port, names: list[str], own: set[str], side: str, announce: bool) -> None:
        if status.connected and status.full_name in names:
            return
        if status.connected:
            status.connected = False
            with self._poller.lock:
                port.close_port()
            log.warning("MIDI %s port %r disappeared; waiting for it to come back", side, status.full_name)
            self.on_event({"type": "port_lost", "port": side, "name": status.full_name})
            return
        match = find_port(names, status.name, own)
        if match is None:
            if not announce and not status.full_name:
                log.warning("MIDI %s port matching %r not found; connecting when it appears", side, status.name)
                status.full_name = status.name
            return
        with self._poller.lock:
            port.open_port(names.index(match), side)
        status.connected, status.full_name, status.patched = True, match, True
        log.info("MIDI %s connected to %r", side, match)
        if announce:
            self.on_event({"type": "port_regained", "port": side, "name": match})


def _own_port(own: dict[str, list[str]], suffix: str) -> str | None:
    return next((name for name in own if name.endswith(suffix)), None)
