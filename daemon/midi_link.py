"""The daemon's MIDI ports and the task that keeps them connected, replaced whole when the port
settings change. Without a MIDI system the daemon runs degraded and `Ports.watch` retries."""

from __future__ import annotations

import asyncio
import logging

import mido

from daemon.config import MidiSettings
from daemon.port_contract import EventSink, Ports, PortsFactory, Receiver
from daemon.ports import MidiPorts, MidiUnavailable

log = logging.getLogger("antiphon")


class MidiLink:
    def __init__(self, on_event: EventSink, factory: PortsFactory | None = None) -> None:
        self.receive: Receiver | None = None  # where incoming messages go, from start() on
        self.on_event = on_event
        self.factory = factory  # None: rtmidi ports as the settings say
        self.ports: Ports | None = None
        self._watch: asyncio.Task | None = None

    def start(self, loop: asyncio.AbstractEventLoop, midi: MidiSettings, receive: Receiver,
              degraded: str = "starting degraded") -> None:
        """Make and open the ports and keep them connected; `degraded` starts the log line without MIDI."""
        self.receive = receive
        if self.factory is not None:
            self.ports = self.factory(self.receive, self.on_event)
        else:
            self.ports = MidiPorts(midi.api, midi.client_name, midi.input, midi.output, self.receive, self.on_event)
        try:
            self.ports.open(loop)
        except MidiUnavailable as error:
            log.warning("%s: %s; retrying with backoff", degraded, error)
        self._watch = loop.create_task(self.ports.watch(loop), name="ports")

    def restart(self, loop: asyncio.AbstractEventLoop, midi: MidiSettings) -> None:
        """Close the ports and open them again as `midi` now says."""
        if self._watch is not None:
            self._watch.cancel()
        if self.ports is not None:
            self.ports.close()
        self.start(loop, midi, self.receive, "MIDI unavailable after reload")

    async def stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    def close(self) -> None:
        if self.ports is not None:
            self.ports.close()

    @property
    def available(self) -> bool:
        return self.ports is not None and self.ports.available

    def status(self) -> dict:
        """Both sides as the state document shows them."""
        if self.ports is None:
            return {"in": {"name": "", "connected": False}, "out": {"name": "", "connected": False}}
        return self.ports.status()

    def where(self) -> str:
        """Where the daemon is connected, in a few words for the log."""
        if not self.available:
            return f"degraded: {self.ports.reason if self.ports else 'not started'}"
        status = self.ports.status()
        return f"in={status['in']['name']} out={status['out']['name']}"

    def send(self, message: mido.Message) -> None:
        if self.ports is not None:
            self.ports.send(message)
