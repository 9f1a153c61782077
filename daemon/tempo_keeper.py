"""The session's tempo side: which grid a call is anchored on, reading the call's tempo at the
hand-over (follow mode), tap tempo, and when the `Metronome` clicks (`[tempo] click`: a count-in
on request, also before each answer with "count-in", on every beat with "always").

In follow mode a call's notes are recorded with their times (`Listener.record`) and wait for the
hand-over: the call's tempo and beat one are read from its onsets, and the call is tokenized again
on that grid (`Listener.replay`). While the player pauses, the call so far is previewed so the
hand-over is planned on the player's grid. The `Timeline` holds the grid and its `source`; this
class decides when it changes and says so (log, events).

Threads: the event loop only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from daemon.clock import now, step_seconds
from daemon.config import Settings
from daemon.listener import Listener
from daemon.metronome import Metronome
from daemon.tempo import estimate_tempo
from daemon.timeline import Timeline

log = logging.getLogger("antiphon.jam")

COUNT_IN_LEAD_S = 0.1  # a count-in's first click, after it is asked for
# Follow mode in accompany mode: the model joins once the onsets span a bar at the tempo read
# from them, or, if they cannot be read, once they span two at the tempo in use.
JOIN_BARS = 1.0
JOIN_GIVE_UP_BARS = 2.0


class TempoKeeper:
    """The tempo each call is read and answered at, and the clicks that let the player hear it."""

    def __init__(self, settings: Settings, timeline: Timeline, listener: Listener, metronome: Metronome,
                 emit: Callable[[dict], None]) -> None:
        self.settings = settings
        self.timeline = timeline
        self.listener = listener
        self.metronome = metronome
        self.emit = emit
        self._unreadable = ""  # why the last call's tempo could not be read (follow mode)

    def update_settings(self, settings: Settings) -> None:
        old, self.settings = self.settings, settings
        if settings.tempo.bpm != old.tempo.bpm and not self.timeline.clock_present(now()):
            self.timeline.set_tempo(settings.tempo.bpm, now())

    @property
    def reading(self) -> bool:
        """Follow mode's call in progress: its notes wait for the hand-over, to be read on its own grid."""
        return self.listener.recording is not None

    def anchor(self, t: float, clicks: bool = True) -> None:
        """The first onset after silence: the timeline anchored on the grid this call is played
        on (a running clock's, the one taps, a count-in or the running metronome set, the tempo
        read so far, or the fixed tempo); in follow mode the call starts recording. `clicks`: the
        metronome may start (not while paused)."""
        tempo, timeline = self.settings.tempo, self.timeline
        following = tempo.follow_clock and timeline.clock_present(t)
        keep_grid = following or timeline.preset or self.metronome.running  # the player plays to its beat
        if following:
            timeline.source = "clock"
        elif not keep_grid and tempo.tempo_mode == "follow":
            self.listener.record()  # read at the hand-over; meanwhile the tempo so far times it
        elif not keep_grid:
            timeline.source = "fixed"
        timeline.preset = False
        timeline.anchor(t, None if keep_grid else timeline.tracker.bpm if self.reading else tempo.bpm)
        if clicks and tempo.click == "always":
            self.metronome.start()

    def follow_clock(self, kind: str, t: float, song_position: int) -> None:
        """A MIDI real-time message: a running clock sets the grid (when `follow_clock` is on)."""
        if self.settings.tempo.follow_clock:
            self.timeline.follow_clock(kind, t, song_position)

    def control(self, control: int, t: float) -> None:
        """A controller pressed between exchanges: the tap-tempo or the count-in one, if either."""
        if control == self.settings.tempo.tap_cc:
            self.tap(t)
        elif control == self.settings.tempo.count_in_cc:
            self.count_in()

    def preview(self) -> bool:
        """The player pauses: in follow mode, the grid read from the call so far (True if it moved)."""
        return self.reading and self.timeline.preview_call(self.listener.onset_times())

    def read_to_join(self) -> list[tuple[str, tuple, float]] | None:
        """Follow mode in accompany mode, at each onset until it returns the call's events: the
        player's tempo and beat one read from the onsets so far, once they span a bar at the
        tempo they are read at (`JOIN_BARS`; the model joins then). Onsets that span
        `JOIN_GIVE_UP_BARS` at the tempo in use and still cannot be read are taken at that tempo.
        Either way the call so far is tokenized again on the grid (`Listener.replay`), recording
        stops, and its events are returned."""
        onsets = self.listener.onset_times()
        estimate = estimate_tempo(onsets, self.timeline.tracker.bpm, self.timeline.steps_per_bar)
        span = max(onsets) - min(onsets)
        given_up = span >= JOIN_GIVE_UP_BARS * self._bar_s
        # A bar is spanned by the onset on its last bar line (half a 16th early counts: it is on it).
        spanned = estimate.readable and span >= (JOIN_BARS * self.timeline.steps_per_bar - 0.5) * estimate.step
        if estimate.readable and (given_up or spanned):
            estimate = self.timeline.read_call(onsets)  # the tracker takes it
            log.info("tempo %.1f bpm read from the player (%d onsets): the model joins", estimate.bpm, estimate.onsets)
        elif given_up:
            log.info("tempo: the playing is %s; the model joins at %.1f bpm", estimate.reason, self.timeline.grid.bpm)
        else:
            return None
        events = self.listener.recording
        self.listener.replay(self.timeline.position)
        return events

    def stale(self, t: float) -> bool:
        """Follow mode's call in accompany mode, never read, and the player silent for a bar (at
        the tempo in use) before t: it is over, and the onset at t begins another."""
        recording = self.listener.recording
        return bool(recording) and not self.listener.busy and t - recording[-1][2] > self._bar_s

    @property
    def _bar_s(self) -> float:
        """A bar at the tempo read so far (seconds)."""
        return self.timeline.steps_per_bar * step_seconds(self.timeline.tracker.bpm)

    def read_call(self, start: int) -> int:
        """Follow mode at the hand-over: read the call's tempo, tokenize it on that grid, and say
        where the answer starts on it (as planned on the call so far, unless that is past)."""
        estimate = self.timeline.read_call(self.listener.onset_times())
        self._unreadable = estimate.reason
        if estimate.readable:
            log.info("tempo %.1f bpm read from the call (%d onsets)", estimate.bpm, estimate.onsets)
        else:
            log.info("tempo: the call is %s; keeping %.1f bpm", estimate.reason, self.timeline.grid.bpm)
        self.listener.replay(self.timeline.position)
        jam = self.settings.jam
        start = self.timeline.handover_step(self.listener.last_release, jam.wait, jam.lead_ms / 1000)
        passed = self.timeline.position(now())
        if start < passed:  # the call's own grid put the hand-over in the past: the next one then
            start = self.timeline.bar_after(math.floor(passed)) if jam.wait == "bar" else math.ceil(passed)
        return start

    def abandon_call(self) -> None:
        """The call was interrupted: it stays on the grid it was played on, unread."""
        self.listener.recording = None

    def answer_tempo(self) -> dict:
        """The answer's tempo for its `answer_started` event: `bpm`, `tempo_source`, and
        `tempo_unreadable` (once) when the call could not be read."""
        tempo = {"bpm": round(self.timeline.grid.bpm, 2), "tempo_source": self.timeline.source}
        if self._unreadable:
            tempo["tempo_unreadable"], self._unreadable = self._unreadable, ""
        return tempo

    def count_in(self) -> None:
        """One bar of clicks at the tempo in use, accented on beat one; the next call's beat one is
        the bar line after it."""
        grid = self.timeline.count_in(now() + COUNT_IN_LEAD_S)
        if self.metronome.running:
            self.metronome.restart()  # its beats on the new grid are the count-in
        else:
            self.metronome.bar(grid.time_at, 0)
        log.info("count-in at %.1f bpm", grid.bpm)

    @property
    def counts_in(self) -> bool:
        """`click = "count-in"`: a bar of clicks before each answer."""
        return self.settings.tempo.click == "count-in"

    def count_in_answer(self, start: int) -> None:
        """The answer starts at stream step `start`: when counting in, a bar of clicks before it
        (`hand_over` left that bar free)."""
        if self.counts_in:
            self.metronome.bar(self.timeline.time_at, start - self.timeline.steps_per_bar)

    def tap(self, t: float) -> None:
        """A tap of the tap-tempo controller; enough of them set the tempo."""
        bpm = self.timeline.tap(t)
        if bpm is not None:
            log.info("tempo %.1f bpm tapped", bpm)
            self.emit({"type": "tempo_tapped", "bpm": round(bpm, 2)})
            self.emit({"type": "state"})
