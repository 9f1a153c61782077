"""Clicks on `click_channel`: a count-in's bar and the metronome that keeps time on the timeline's grid.

Beats fall every quarter note from each bar line (a bar of 7/8 has a short last beat); beat one is
accented. Clicks have a `NoteOutput` of their own: an answer stopped or withdrawn never cuts the
metronome, and an answer's report never counts a click. Every click sent is told to the
`EchoFilter`, as an answer note is: a synth's MIDI thru does not bring it back as the player's.

The metronome reads the grid afresh every POLL_S and hands the output each click LOOKAHEAD_S
before it is due (the output sends it on time), so it follows the grid wherever it moves (a tempo
setting, a MIDI clock, follow mode's reading, taps); a click already handed over stays where it was.

Threads: the event loop only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import mido

from daemon.clock import now
from daemon.config import Settings
from daemon.echo import EchoFilter
from daemon.output import NoteOutput
from daemon.timeline import Timeline

BEAT_STEPS = 4  # a click every quarter note
CLICK_S = 0.05  # a click's length (shorter at fast tempi: half a beat)
CLICK_ACCENT_VELOCITY, CLICK_VELOCITY = 110, 70
POLL_S = 0.025
LOOKAHEAD_S = 0.1  # more than POLL_S and the loop's usual lateness: no beat is missed
MIN_GAP_STEPS = 0.5  # a moved grid never doubles a click (the shortest beat, of a 5/16 bar, is one step)


def beats_between(start: float, end: float, steps_per_bar: int) -> list[int]:
    """The beats in [start, end), in grid steps (bar lines at multiples of `steps_per_bar`)."""
    bar_line = math.floor(start / steps_per_bar) * steps_per_bar
    found = []
    while bar_line < end:
        found += [step for step in range(bar_line, bar_line + steps_per_bar, BEAT_STEPS) if start <= step < end]
        bar_line += steps_per_bar
    return found


class Metronome:
    """A count-in's bar on request, and (`[tempo] click = "always"`) clicks on every beat until stopped."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[mido.Message], None], settings: Settings,
                 timeline: Timeline, echoes: EchoFilter) -> None:
        jam = settings.jam
        self.loop = loop
        self.timeline = timeline
        self.tempo = settings.tempo
        self.output = NoteOutput(loop, send, jam.late_policy, jam.output_latency_ms / 1000,
                                 on_note=lambda pitch, _velocity, _due, sent: echoes.sent(pitch, sent))
        self._timer: asyncio.TimerHandle | None = None
        self._last: float | None = None  # when the metronome's last click is due

    def update_settings(self, settings: Settings) -> None:
        self.output.set_timing(settings.jam.late_policy, settings.jam.output_latency_ms / 1000)
        self.tempo = settings.tempo
        if self.running and settings.tempo.click != "always":
            self.stop()

    @property
    def running(self) -> bool:
        return self._timer is not None

    def bar(self, time_at: Callable[[float], float], bar_line: float) -> None:
        """One bar of clicks from `bar_line`, a step that `time_at` turns into a time."""
        for offset in range(0, self.timeline.steps_per_bar, BEAT_STEPS):
            self._click(time_at(bar_line + offset), offset == 0)

    def start(self) -> None:
        """Clicks on every beat of the grid from the next one on (if not running already)."""
        if self._timer is None:
            self._tick()

    def restart(self) -> None:
        """The grid moved at once (a count-in): clicks handed over on the old one go."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """No more clicks; a sounding one ends now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._last = None
        self.output.release_all()

    def panic(self) -> None:
        """Stopped, and its channel silenced (pause, panic, a lost port, exit)."""
        self.stop()
        self.output.panic()

    def cut_count_in(self) -> None:
        """An answer stopped or withdrawn: its count-in's clicks go (a running metronome keeps time)."""
        if self._timer is None:
            self.output.release_all()

    def _tick(self) -> None:
        grid, bar = self.timeline.grid, self.timeline.steps_per_bar
        sendable = now() + self.output.send_ahead  # a click due earlier would be late: skipped
        start = grid.position(sendable)
        if self._last is not None:
            start = max(start, grid.position(self._last) + MIN_GAP_STEPS)
        for step in beats_between(start, grid.position(sendable + LOOKAHEAD_S), bar):
            self._last = grid.time_at(step)
            self._click(self._last, step % bar == 0)
        self._timer = self.loop.call_later(POLL_S, self._tick)

    def _click(self, on: float, accent: bool) -> None:
        tempo = self.tempo
        length = min(CLICK_S, BEAT_STEPS * self.timeline.grid.step / 2)
        self.output.play(tempo.click_channel - 1, tempo.click_accent_note if accent else tempo.click_note,
                         CLICK_ACCENT_VELOCITY if accent else CLICK_VELOCITY, on, on + length)
