"""An in-process port pair with the ports contract, for a machine with no MIDI at all."""

from __future__ import annotations

import asyncio

import mido

from daemon.clock import now
from daemon.port_contract import EventSink, PortStatus, Receiver


class LoopbackPorts:
    """An in-process port pair with the MidiPorts interface, for a machine with no MIDI at all.

    `play(message)` is the keyboard side (arrives at the daemon's input, timestamped now);
    every message the daemon sends is handed to `on_output(message, time)`."""

    def __init__(self, receive: Receiver, on_event: EventSink, on_output: Receiver | None = None) -> None:
        self.receive = receive
        self.on_event = on_event
        self.on_output = on_output
        self.api = "in-process"
        self.available = False
        self.reason = ""
        self.dropped = self.malformed = 0
        self.input = PortStatus("in-process:in", full_name="in-process:in")
        self.output = PortStatus("in-process:out", full_name="in-process:out")
        self._loop: asyncio.AbstractEventLoop | None = None

    def status(self) -> dict:
        return {"in": self.input.as_dict(), "out": self.output.as_dict()}

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.available = self.input.connected = self.output.connected = True

    def close(self) -> None:
        self.available = self.input.connected = self.output.connected = False

    def play(self, message: mido.Message) -> None:
        assert self._loop is not None
        self.receive(message, now())

    def send(self, message: mido.Message) -> None:
        if self.on_output is not None and self._loop is not None:
            self.on_output(message, now())

    async def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        await asyncio.Event().wait()
