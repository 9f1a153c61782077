"""What the daemon needs from its MIDI ports, whatever carries the messages.

`MidiPorts` (rtmidi: ALSA or JACK) and `LoopbackPorts` (in process) both satisfy `Ports`. A
ports object is made with a `Receiver` (every incoming message with its arrival time on
`clock.now()`'s clock, called on the event loop) and an `EventSink` (port events such as
"port_lost", "port_regained", "midi_lost", "midi_available", on the loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import mido

Receiver = Callable[[mido.Message, float], None]
EventSink = Callable[[dict], None]


@dataclass
class PortStatus:
    name: str
    connected: bool = False
    full_name: str = ""  # what the name matched, or our virtual port's listed name
    patched: bool = True  # the JACK connection to the named port exists, as far as the patchbay says

    def as_dict(self) -> dict:
        return {"name": self.full_name or self.name, "connected": self.connected and self.patched}


class Ports(Protocol):
    api: str  # "alsa", "jack" or "in-process"
    available: bool  # the MIDI system is there (both sides opened)
    reason: str  # why not, when not available
    input: PortStatus
    output: PortStatus

    @property
    def dropped(self) -> int:
        """Input messages dropped because the loop fell behind."""
        ...

    @property
    def malformed(self) -> int:
        """Input messages dropped because they were not MIDI (truncated, stray data bytes)."""
        ...

    def status(self) -> dict:
        """{"in": {"name", "connected"}, "out": {...}} as the state document shows it."""
        ...

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open both sides; raises MidiUnavailable (and keeps its text in `reason`) without a MIDI system."""
        ...

    def close(self) -> None: ...

    def send(self, message: mido.Message) -> None:
        """Send now, never blocking; a message for a disconnected output is dropped."""
        ...

    async def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run forever: keep the ports connected by name, report changes to the EventSink."""
        ...


PortsFactory = Callable[[Receiver, EventSink], Ports]
