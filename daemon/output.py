"""Answer notes out, on time, and never left hanging.

Notes are scheduled on the daemon's clock (`clock.now()`, which the loop's call_at runs on). Every note-on sent
has its note-off scheduled with it; sounding notes are counted per (channel, note). A note
due again while it still sounds is ended first, so each note-on keeps exactly one note-off.
`panic()` silences a real synth in the order that works: explicit note-offs, sustain off
(CC 64 = 0), all notes off (CC 123; alone it leaves sustained notes ringing), all sound off
(CC 120).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import mido

from daemon.clock import now

log = logging.getLogger("antiphon.output")

SUSTAIN = 64
# The loop's timers wake up to a millisecond late (epoll rounds its timeout up), so a note-on
# is woken this much early and waits out the rest on the monotonic clock.
EARLY_WAKE_S = 0.002
ALL_SOUND_OFF = 120
ALL_NOTES_OFF = 123


def silencing_messages(channels) -> list[mido.Message]:
    """Sustain off, all notes off, all sound off on each channel, in that order (see panic)."""
    return [mido.Message("control_change", channel=channel, control=control, value=value)
            for channel in sorted(channels) for control, value in ((SUSTAIN, 0), (ALL_NOTES_OFF, 0), (ALL_SOUND_OFF, 0))]


@dataclass
class OutputStats:
    notes: int = 0
    late_played: int = 0
    late_dropped: int = 0


@dataclass(eq=False)
class _Scheduled:
    channel: int
    pitch: int
    velocity: int
    on_time: float
    off_time: float
    on_handle: asyncio.TimerHandle | None = None
    off_handle: asyncio.TimerHandle | None = None
    sounding: bool = False


class NoteOutput:
    """Schedules notes on one sender; `send(message)` must not block (an rtmidi port's send)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[mido.Message], None],
        late_policy: str = "play",
        send_ahead: float = 0.0,
        on_note: Callable[[int, int, float, float], None] | None = None,
    ) -> None:
        self.loop = loop
        self.send = send
        self.late_policy = late_policy
        self.send_ahead = send_ahead  # the synth's own latency: send this much before the grid time
        self.on_note = on_note  # (pitch, velocity, due, sent) after every note-on
        self.sounding: Counter = Counter()  # (channel, note) -> note-ons without their note-off yet
        self.stats = OutputStats()
        self._notes: set[_Scheduled] = set()
        self._by_key: dict[tuple[int, int], list[_Scheduled]] = {}
        self.channels_used: set[int] = set()

    def play(self, channel: int, pitch: int, velocity: int, on_time: float, off_time: float) -> bool:
        """Schedule one note (times are grid times); False when dropped as late."""
        due = on_time - self.send_ahead
        note = _Scheduled(channel, pitch, velocity, due, max(off_time - self.send_ahead, due))
        if due < now():
            if self.late_policy == "drop":
                self.stats.late_dropped += 1
                return False
            self.stats.late_played += 1
        self.channels_used.add(channel)
        self._notes.add(note)
        note.on_handle = self.loop.call_at(due - EARLY_WAKE_S, self._note_on, note)
        return True

    def set_timing(self, late_policy: str, send_ahead: float) -> None:
        """From the next note on: what to do with a late note, how early to send each one."""
        self.late_policy = late_policy
        self.send_ahead = send_ahead

    def release_all(self) -> None:
        """Forget every note not yet started and end every sounding one (explicit note-offs only)."""
        for note in sorted(self._notes, key=lambda n: (n.on_time, n.channel, n.pitch)):
            if note.on_handle is not None:
                note.on_handle.cancel()
            if note.sounding:
                self._note_off(note)
            else:
                self._notes.discard(note)

    def panic(self) -> None:
        """Release everything, then CC 64 = 0, CC 123 and CC 120 on every channel used."""
        self.release_all()
        for (channel, pitch), count in list(self.sounding.items()):
            for _ in range(count):
                self._send(mido.Message("note_off", channel=channel, note=pitch, velocity=0))
        self.sounding.clear()
        for message in silencing_messages(self.channels_used):
            self._send(message)

    @property
    def busy(self) -> bool:
        """Some note still sounds or waits to be played."""
        return bool(self._notes)

    @property
    def last_off_time(self) -> float:
        return max((n.off_time for n in self._notes), default=0.0)

    # -- callbacks --------------------------------------------------------------------
    def _note_on(self, note: _Scheduled) -> None:
        note.on_handle = None
        while now() < note.on_time:
            pass  # at most EARLY_WAKE_S: a sleep could not wake this precisely
        key = (note.channel, note.pitch)
        for earlier in list(self._by_key.get(key, ())):
            self._note_off(earlier)
        sent = now()
        self._send(mido.Message("note_on", channel=note.channel, note=note.pitch, velocity=note.velocity))
        self.sounding[key] += 1
        note.sounding = True
        self._by_key.setdefault(key, []).append(note)
        note.off_handle = self.loop.call_at(max(note.off_time, sent), self._note_off, note)
        self.stats.notes += 1
        if self.on_note is not None:
            self.on_note(note.pitch, note.velocity, note.on_time + self.send_ahead, sent + self.send_ahead)

    def _note_off(self, note: _Scheduled) -> None:
        if note.off_handle is not None:
            note.off_handle.cancel()
            note.off_handle = None
        self._notes.discard(note)
        if not note.sounding:
            return
        note.sounding = False
        key = (note.channel, note.pitch)
        self._by_key[key].remove(note)
        if not self._by_key[key]:
            del self._by_key[key]
        self.sounding[key] -= 1
        if self.sounding[key] <= 0:
            del self.sounding[key]
        self._send(mido.Message("note_off", channel=note.channel, note=note.pitch, velocity=0))

    def _send(self, message: mido.Message) -> None:
        try:
            self.send(message)
        except Exception as error:  # a port that vanished mid-send: the watcher reports it
            log.debug("send failed (%s): %s", message, error)
