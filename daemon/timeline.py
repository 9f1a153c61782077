"""Where the conversation is in musical time: the grid, the stream's bar lines, and time <-> step.

Two kinds of step: grid positions (16th notes from the tempo grid's zero, `clock.TempoGrid`) and
stream steps (16th notes from the conversation's first bar line, what the tokens count). They
differ by `shift`, fixed when a phrase is anchored: silences between exchanges are collapsed, so
the first onset after silence is beat one of the bar after everything in the stream. Bar lines
fall every `steps_per_bar` from `bar_origin` (the bar line where the current meter began).

The grid is a fixed tempo, an external MIDI clock's (`follow_clock`), a tapped one (`tap`: beat
one on the last tap), or, in follow mode, the one read from the call's onsets when the player
hands over (`read_call`); `source` says which, and the grid's tempo is the tempo in use. A
`Timeline` is owned by the event loop. The worker thread gets a `TimelineView`, an immutable
copy of the grid and shift taken when a job starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from daemon.clock import ClockFollower, TempoGrid, step_seconds
from daemon.tempo import GridFollower, TapTempo, TempoEstimate, TempoTracker, estimate_tempo

BEAT_STEPS = 4  # a quarter note, in sixteenths


@dataclass(frozen=True)
class TimelineView:
    """Stream step <-> time for a fixed grid and shift."""

    grid: TempoGrid
    shift: float

    def position(self, t: float) -> float:
        """Stream step (float) at time t."""
        return self.grid.position(t) + self.shift

    def time_at(self, step: float) -> float:
        return self.grid.time_at(step - self.shift)

    @property
    def step_s(self) -> float:
        return self.grid.step


class Timeline:
    """The loop's timeline: tempo changes, anchoring, and bar arithmetic on the stream."""

    def __init__(self, bpm: float, steps_per_bar: int, t: float) -> None:
        self.view = TimelineView(TempoGrid(t, step_seconds(bpm)), 0.0)  # replaced whole, never changed
        self.steps_per_bar = steps_per_bar
        self.bar_origin = 0  # a bar line of the current meter (bar lines are every steps_per_bar from it)
        self.end = 0  # the first bar line after everything in the stream
        self.clock = ClockFollower()
        self.source = "fixed"  # where the grid's tempo comes from: fixed, clock, follow or tap
        self.tracker = TempoTracker(bpm, steps_per_bar)  # follow mode: the tempo read so far
        self.taps = TapTempo()
        self.preset = False  # the next anchor keeps the grid taps or a count-in set (and its bar lines)
        self._follower: GridFollower | None = None

    @property
    def grid(self) -> TempoGrid:
        return self.view.grid

    @property
    def shift(self) -> float:
        """Stream step = grid position + shift."""
        return self.view.shift

    def position(self, t: float) -> float:
        """Stream step (float) at time t."""
        return self.view.position(t)

    def time_at(self, step: float) -> float:
        return self.view.time_at(step)

    # -- the grid -----------------------------------------------------------------------
    def set_grid(self, grid: TempoGrid) -> None:
        """Another grid from now on (an external clock's); the shift stays."""
        self.view = TimelineView(grid, self.shift)

    def follow_clock(self, kind: str, t: float, song_position: int = 0) -> None:
        """One MIDI real-time message; a running clock sets the grid."""
        self.clock.handle(kind, t, song_position)
        if kind == "clock" and self.clock.present(t):
            grid = self.clock.grid()
            if grid is not None:
                self.set_grid(grid)

    def clock_present(self, t: float) -> bool:
        return self.clock.present(t)

    def set_tempo(self, bpm: float, t: float) -> None:
        """A new tempo setting from time t on, the position at t kept."""
        self.set_grid(self.grid.with_bpm(bpm, t))
        self.tracker.reset(bpm)
        self.source, self.preset = "fixed", False

    def tap(self, t: float) -> float | None:
        """A tap of the tap-tempo controller: once enough taps set a tempo (returned), the grid
        has it with a bar line on this tap (as fitted to all the taps), and the next call is read on it."""
        tapped = self.taps.tap(t)
        if tapped is None:
            return None
        bpm, beat_one = tapped
        self.set_grid(TempoGrid(beat_one, step_seconds(bpm)))
        self.tracker.reset(bpm)
        self.source, self.preset = "tap", True
        return bpm

    def count_in(self, t: float) -> TempoGrid:
        """A count-in's grid at the tempo in use: a bar line at t, the next call's beat one on
        the one after it."""
        self.set_grid(TempoGrid(t, self.grid.step))
        self.preset = True
        return self.grid

    def read_call(self, onsets: list[float]) -> TempoEstimate:
        """Follow mode at the hand-over: the call's tempo and beat one from its onsets (the
        tracker takes them), the grid re-anchored on them (the call's first bar line stays where
        it was anchored). A call that cannot be read leaves the grid as it is."""
        estimate = self.tracker.update(onsets)
        if estimate.readable:
            self._anchor_on(estimate)
            self.source = "follow"
        return estimate

    def preview_call(self, onsets: list[float]) -> bool:
        """Follow mode while the player pauses: the call so far read (the tracker does not take
        it), so the hand-over is planned on the player's grid, not the one the call began on."""
        estimate = estimate_tempo(onsets, self.tracker.bpm, self.steps_per_bar)
        if estimate.readable:
            self._anchor_on(estimate)
        return estimate.readable

    def follow(self, t: float) -> bool:
        """Follow mode while playing along: a player's onset at time t moves the grid with them
        (`GridFollower`; the shift stays). True if it moved."""
        if self._follower is None or self._follower.grid != self.grid:
            # The grid was set anew: follow from there.
            self._follower = GridFollower(self.grid, t, self.steps_per_bar, self.bar_origin - self.shift)
        if not self._follower.onset(t):
            return False
        self.set_grid(self._follower.grid)
        self.tracker.follow(self.grid.bpm)
        return True

    def _anchor_on(self, estimate: TempoEstimate) -> None:
        self.set_grid(estimate.grid())
        self.anchor(estimate.origin, None)

    def anchor(self, t: float, bpm: float | None = None) -> None:
        """The first onset after silence, at time t: beat one of the bar at `end`.

        With `bpm` the grid starts at t at that tempo; without, the grid stays (an external
        clock's) and its bar phase is kept: the onset's bar is the one t falls in."""
        grid = self.grid if bpm is None else TempoGrid(t, step_seconds(bpm))
        self.bar_origin = self.end
        bar = self.steps_per_bar
        onset_bar = math.floor(round(grid.position(t)) / bar) * bar
        self.view = TimelineView(grid, self.end - onset_bar)

    # -- bar arithmetic (stream steps) ----------------------------------------------------
    def bar_after(self, step: int) -> int:
        """The first bar line after `step`."""
        bar = self.steps_per_bar
        return self.bar_origin + ((step - self.bar_origin) // bar + 1) * bar

    def bar_at_or_before(self, step: float) -> int:
        bar = self.steps_per_bar
        return self.bar_origin + math.floor((step - self.bar_origin) / bar) * bar

    def handover_step(self, released: float, wait: str | int, lead_s: float) -> int:
        """Where an answer starts after the player let go at `released`: the next bar line
        (`wait` "bar") or `wait` steps later."""
        if wait == "bar":
            # The bar line must leave time to prepare: a release just before it (legato into
            # the next bar) is not silence until that bar line.
            return self.bar_after(math.floor(released + lead_s / self.grid.step))
        return math.ceil(released + wait)

    def join_step(self, t: float) -> int | None:
        """Where accompaniment may join for a player who started at time t: the first beat (a
        quarter note of the bar) at or after it. None would mean "not yet" (a tempo still being
        read from the player): the session asks again at the player's next key event."""
        beat = BEAT_STEPS
        return self.bar_origin + math.ceil((self.position(t) - self.bar_origin) / beat) * beat

    def extend_to(self, step: int) -> None:
        """A note starts at `step`: the stream now ends at the bar line after it (or later)."""
        self.end = max(self.end, self.bar_after(step))
