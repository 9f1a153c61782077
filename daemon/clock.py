"""The 16th-note grid: a fixed tempo, or an external MIDI clock (24 ppqn) that sets it.

Positions are in 16th-note steps (floats) from the grid's zero; times are seconds on the daemon's
one clock, `now()`. A `TempoGrid` is anchored by the session (the first onset after silence
is beat one of a bar). A `ClockFollower` turns clock ticks, start/stop/continue and song position
into the same kind of grid, fitted over the last beat of ticks so one late tick does not shift it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

TICKS_PER_QUARTER = 24
TICKS_PER_STEP = TICKS_PER_QUARTER // 4
# Ticks the grid is fitted over (one beat), and how long without ticks before the clock is gone.
FIT_TICKS = TICKS_PER_QUARTER
CLOCK_TIMEOUT_S = 0.5


# How far apart the event loop's clock and now() may read before the loop is refused.
LOOP_CLOCK_TOLERANCE_S = 0.05


def now() -> float:
    """The daemon's one clock, in seconds: input stamps (on the poller thread), the grid, the
    inference worker and the output's schedule all read it."""
    return time.monotonic()


def check_loop_clock(loop: asyncio.AbstractEventLoop) -> None:
    """Timers are set with `loop.call_at(t)` for times t read from now(): the loop must run on the
    same clock (asyncio's default loop does). Raises RuntimeError for one that does not."""
    apart = abs(loop.time() - now())
    if apart > LOOP_CLOCK_TOLERANCE_S:
        raise RuntimeError(f"the event loop's clock is {apart:.3f} s away from time.monotonic(); "
                           "the daemon needs a loop on the monotonic clock")


def step_seconds(bpm: float) -> float:
    return 60.0 / bpm / 4


@dataclass(frozen=True)
class TempoGrid:
    """Steps at a fixed tempo: position(t) = (t - origin) / step."""

    origin: float
    step: float

    def position(self, t: float) -> float:
        return (t - self.origin) / self.step

    def time_at(self, position: float) -> float:
        return self.origin + position * self.step

    @property
    def bpm(self) -> float:
        return 60.0 / (self.step * 4)

    def with_bpm(self, bpm: float, now: float) -> TempoGrid:
        """Same position at `now`, new tempo from there on."""
        new_step = step_seconds(bpm)
        return TempoGrid(now - self.position(now) * new_step, new_step)


class ClockFollower:
    """Follows MIDI clock messages; `grid()` is a TempoGrid whose zero is song position 0."""

    def __init__(self) -> None:
        self.running = False
        self._tick = -1  # song position in ticks of the latest clock (-1: the next clock is 0)
        self._times: deque[tuple[int, float]] = deque(maxlen=FIT_TICKS)
        self._last_tick_time: float | None = None

    def handle(self, kind: str, t: float, song_position: int = 0) -> None:
        """One real-time message: 'clock', 'start', 'stop', 'continue' or 'songpos' (in 16ths)."""
        if kind == "clock":
            if self._last_tick_time is not None and t - self._last_tick_time > CLOCK_TIMEOUT_S:
                self._times.clear()
            self._last_tick_time = t
            if self.running:
                self._tick += 1
                self._times.append((self._tick, t))
        elif kind == "start":
            self.running = True
            self._tick = -1
            self._times.clear()
        elif kind == "continue":
            self.running = True
            self._times.clear()
        elif kind == "stop":
            self.running = False
        elif kind == "songpos":
            self._tick = song_position * TICKS_PER_STEP - 1
            self._times.clear()

    def present(self, now: float) -> bool:
        """A running clock that ticked recently and has enough ticks for a tempo."""
        return (
            self.running
            and self._last_tick_time is not None
            and now - self._last_tick_time <= CLOCK_TIMEOUT_S
            and len(self._times) >= 2
        )

    def grid(self) -> TempoGrid | None:
        """A least-squares line through the recent ticks: tick = (t - origin) / period."""
        if len(self._times) < 2:
            return None
        count = len(self._times)
        mean_tick = sum(k for k, _ in self._times) / count
        mean_time = sum(t for _, t in self._times) / count
        spread = sum((k - mean_tick) ** 2 for k, _ in self._times)
        period = sum((k - mean_tick) * (t - mean_time) for k, t in self._times) / spread
        if period <= 0:
            return None
        origin = mean_time - mean_tick * period
        return TempoGrid(origin, period * TICKS_PER_STEP)
