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

Under JACK, `watch()` also keeps named ports patched and guards the input against an
unterminated sysex: daemon/jack_keeper.py.
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
from daemon.jack_keeper import GUARD_PORT, JackKeeper, SysexGuard
from daemon.jack_server import jack_running
from daemon.midi_input import RTMIDI_QUEUE, InputBuffer, InputPoller
from daemon.port_contract import EventSink, PortStatus, Receiver
from daemon.port_release import close_port, release

log = logging.getLogger("antiphon.ports")

APIS = {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK}
API_LABELS = {"alsa": "the ALSA sequencer", "jack": "the JACK server"}
WATCH_INTERVAL_S = 0.5
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# JACK sends what a client wrote at its next process cycle: a port closed sooner loses it.
JACK_DRAIN_S = 0.1
JACK_PROBE_EVERY = 10  # port-list polls between checks that the JACK server is still there
CONNECTION_CHECK_EVERY = 2  # port-list polls between checks of the JACK connections


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
    if shutil.which("jack_wait") is None:
        return jack_running()
    result = await jack_patchbay.run_tool("jack_wait", "-c")  # None: it hung (or could not start)
    return result is not None and result[1].strip() == "running"


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
        self._keeper: JackKeeper | None = None  # under JACK only
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
            self._keeper = JackKeeper(self.input, self.output, self.input_virtual, self.output_virtual,
                                      SysexGuard(self._lister[1], self._poller), self.on_event)
        self.available, self.reason = True, ""
        self._refresh(announce=False)

    def close(self) -> None:
        self._stop_polling()
        if self.api == "jack" and self._out is not None:
            time.sleep(max(0.0, self._last_send + JACK_DRAIN_S - now()))
        for port in (self._in, self._out, *(self._lister or ())):
            if port is not None:
                try:
                    release(port)
                except Exception as error:  # already gone with its server
                    log.debug("closing a port: %s", error)
        self._in = self._out = self._lister = self._keeper = None
        self.input.connected = self.output.connected = False
        self.available = False

    def _abandon(self) -> None:
        """Forget the clients of a server that died without touching them: libjack has already
        freed them, and closing or deleting them then crashes the process. Kept referenced so
        the garbage collector never closes them either (a few objects per outage)."""
        self._stop_polling()
        self._abandoned.extend(p for p in (self._in, self._out, *(self._lister or ())) if p is not None)
        self._in = self._out = self._lister = self._keeper = None
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
                    if self._keeper is not None:
                        self._keeper.guard_input()
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

    async def _keep_connections(self) -> None:
        keeper = self._keeper
        ports = await jack_patchbay.connections(self.client_name)
        if ports is None or keeper is None or keeper is not self._keeper:  # no tools or no server; or reopened
            return
        await keeper.keep_connections({name: linked for name, linked in ports.items() if self._is_own(name)})

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
                close_port(port)
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

