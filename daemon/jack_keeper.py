"""What `MidiPorts.watch()` keeps right under JACK beyond the port list.

JACK lets a patchbay remove a connection while both ports live on, and RtMidi's JACK input can
be deafened by one unterminated sysex; neither shows in the port list the watch polls. So under
JACK the watch also asks `jack_keeper.JackKeeper` to make removed connections of named ports
again (the state then says what is really connected) and to keep `SysexGuard`'s probe patched
into our input and ticking.
"""

from __future__ import annotations

import logging

import rtmidi

from daemon import jack_patchbay
from daemon.midi_input import PROBES_IN_FLIGHT, SYSEX_END, InputPoller
from daemon.port_contract import EventSink, PortStatus

log = logging.getLogger("antiphon.ports")

GUARD_PORT = "sysex-guard"  # the SysexGuard's output port, on the watch client


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


class JackKeeper:
    """The JACK connections of one opened pair of ports, and their input's sysex guard.

    Made by `MidiPorts` each time it opens under JACK; the statuses are the ports' own, so what
    the keeper finds is what the daemon's state reports."""

    def __init__(self, input: PortStatus, output: PortStatus, input_virtual: bool, output_virtual: bool,
                 guard: SysexGuard, on_event: EventSink) -> None:
        self.input = input
        self.output = output
        self.input_virtual = input_virtual
        self.output_virtual = output_virtual
        self.guard = guard
        self.on_event = on_event

    def guard_input(self) -> None:
        """Once per watch tick: the guard's verdict on the probes, reported as an input reset."""
        if not self.input.connected:
            self.guard.disarm()
        elif self.guard.tick():
            reason = "an unterminated sysex (F0 without F7) was swallowing every message after it"
            log.warning("MIDI input %r reset: %s", self.input.full_name, reason)
            self.on_event({"type": "input_reset", "port": "input", "name": self.input.full_name, "reason": reason})

    async def keep_connections(self, own: dict[str, list[str]]) -> None:
        """Make again the connections a patchbay removed (named ports), and the guard's.

        `own`: our client's ports as `jack_lsp -c` lists them, with what each is connected to."""
        guard = self.guard
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


def _own_port(own: dict[str, list[str]], suffix: str) -> str | None:
    return next((name for name in own if name.endswith(suffix)), None)
