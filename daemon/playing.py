"""Playing the keyboard's side: phrases as timed MIDI, a keyboard on real ports, and back to notes.

Shared by the demo, the tests and the benchmarks, so each plays and reads a phrase the same way.
"""

from __future__ import annotations

import asyncio
import threading

import mido
import rtmidi

from daemon.clock import now, step_seconds
from daemon.codec import Note
from daemon.midi_input import RTMIDI_QUEUE, InputPoller
from daemon.port_release import release
from daemon.ports import APIS, find_port


class Keyboard:
    """A MIDI client that plays into one port and records what another sends, with arrival times."""

    def __init__(self, api: str, to_port: str, from_port: str, client_name: str = "keyboard") -> None:
        self.api = api
        self.client_name = client_name
        self.received: list[tuple[float, mido.Message]] = []
        self._lock = threading.Lock()
        self._out = rtmidi.MidiOut(APIS[api], client_name)
        self._in = rtmidi.MidiIn(APIS[api], client_name, queue_size_limit=RTMIDI_QUEUE)
        self._in.ignore_types(sysex=True, timing=True, active_sense=True)
        self.to_port = to_port
        self.from_port = from_port
        self.connect_out()
        self.connect_in()
        self._poller = InputPoller(self._arrived, self._in)

    def connect_out(self) -> None:
        self._out.open_port(self._index(self._out.get_ports(), self.to_port), "out")

    def connect_in(self) -> None:
        self._in.open_port(self._index(self._in.get_ports(), self.from_port), "in")

    def unplug_out(self) -> None:
        """The keyboard's cable pulled: its output port disappears from the port list."""
        release(self._out)

    def replug_out(self, port_name: str) -> None:
        """Plugged back in: a fresh client with a port of the same name, connected nowhere."""
        self._out = rtmidi.MidiOut(APIS[self.api], self.client_name)
        self._out.open_virtual_port(port_name)

    def _index(self, names: list[str], wanted: str) -> int:
        match = find_port(names, wanted)
        if match is None:
            raise RuntimeError(f"no MIDI port matching {wanted!r} among {names}")
        return names.index(match)

    def _arrived(self, data: bytes, arrived: float) -> None:
        try:
            message = mido.Message.from_bytes(data)
        except ValueError:
            return
        with self._lock:
            self.received.append((arrived, message))

    def send(self, message: mido.Message) -> float:
        sent = now()
        self._out.send_message(message.bytes())
        return sent

    def take(self) -> list[tuple[float, mido.Message]]:
        with self._lock:
            received, self.received = self.received, []
        return received

    def close(self) -> None:
        self._poller.stop()
        for port in (self._in, self._out):
            try:
                release(port)
            except Exception:  # already deleted by unplug_out
                pass


def phrase_events(notes: list[Note], bpm: float, channel: int = 0) -> list[tuple[float, mido.Message]]:
    """(seconds from the first onset, message) for grid notes played at `bpm`; offs before ons."""
    step = step_seconds(bpm)
    events = []
    for note in notes:
        events.append((note.start * step, 1, mido.Message("note_on", channel=channel, note=note.pitch,
                                                           velocity=note.velocity)))
        events.append(((note.start + note.duration) * step, 0, mido.Message("note_off", channel=channel,
                                                                             note=note.pitch)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [(t, message) for t, _, message in events]


async def play(events: list[tuple[float, mido.Message]], send, start: float) -> None:
    """Send each message at start + its offset, on the loop's clock."""
    loop = asyncio.get_running_loop()
    for offset, message in events:
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        send(message)


def notes_from(received: list[tuple[float, mido.Message]], origin: float, bpm: float) -> list[Note]:
    """Recorded messages back to grid notes (steps from `origin`)."""
    step = step_seconds(bpm)
    sounding: dict[int, list[tuple[float, int]]] = {}
    notes = []
    for t, message in received:
        if message.type == "note_on" and message.velocity > 0:
            sounding.setdefault(message.note, []).append((t, message.velocity))
        elif message.type in ("note_on", "note_off") and sounding.get(message.note):
            on, velocity = sounding[message.note].pop(0)
            start = round((on - origin) / step)
            notes.append(Note(start, message.note, max(1, round((t - origin) / step) - start), velocity))
    return sorted(notes)
