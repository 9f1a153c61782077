"""The player's side of an exchange: the call's notes, its length, its loudness.

Wraps the `LiveTokenizer` (note events at stream positions in, notes committed in encoder order
out) with what the session needs to know about the call: where it began and when the player
last let go (the answer's length follows the call's), whether a key is stuck, and the velocity
an answer that follows the player plays at. Positions are stream steps (floats); loop thread only.

In follow mode the call is also recorded with its times (`record`), to be tokenized again on the
grid read from it at the hand-over (`replay`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from daemon.answer_loop import DEFAULT_VELOCITY
from daemon.codec import Note
from daemon.config import JamSettings
from daemon.live_tokenizer import LiveTokenizer

VELOCITY_MEMORY = 16  # player notes the answer's velocity follows
COMMIT_INTERVAL_S = 0.05  # how often held-back notes are re-checked while the player plays


class Listener:
    commit_interval_s = COMMIT_INTERVAL_S

    def __init__(self) -> None:
        self.tokenizer = LiveTokenizer()
        self.call_start = 0  # stream bar line where the current call began
        self.call_notes: list[Note] = []  # the current call's notes as committed (what steering follows)
        self.last_release = 0.0  # position of the latest note-off (or hand-over request)
        self.velocities: deque[int] = deque(maxlen=VELOCITY_MEMORY)
        self._onsets: deque[int] = deque(maxlen=2)  # the call's last two distinct onset steps
        self.recording: list[tuple[str, tuple, float]] | None = None  # (event, its arguments, time)

    # -- events -----------------------------------------------------------------------
    def begin_call(self, start: int) -> None:
        """A new call begins at the bar line `start`."""
        self.call_start = start
        self.call_notes = []
        self._onsets.clear()

    def note_on(self, pitch: int, velocity: int, position: float, t: float) -> None:
        self.velocities.append(velocity)
        self._event("note_on", (pitch, velocity), position, t)

    def note_off(self, pitch: int, position: float, t: float) -> None:
        self._event("note_off", (pitch,), position, t)
        self.last_release = position

    def pedal(self, down: bool, position: float, t: float) -> None:
        self._event("pedal", (down,), position, t)

    def _event(self, kind: str, arguments: tuple, position: float, t: float) -> None:
        getattr(self.tokenizer, kind)(*arguments, position)
        if kind == "note_on":
            step = round(position)
            if not self._onsets or self._onsets[-1] != step:
                self._onsets.append(step)
        if self.recording is not None:
            self.recording.append((kind, arguments, t))

    # -- follow mode ------------------------------------------------------------------
    def record(self) -> None:
        """Keep this call's events with their times, from now to the replay."""
        self.recording = []

    def onset_times(self) -> list[float]:
        return [t for kind, _, t in self.recording or () if kind == "note_on"]

    def replay(self, position: Callable[[float], float]) -> None:
        """Tokenize the recorded call again, each event at `position(its time)` (the grid read
        from the call); recording stops."""
        events, self.recording = self.recording or [], None
        self.tokenizer = LiveTokenizer()
        self._onsets.clear()
        for kind, arguments, t in events:
            self._event(kind, arguments, position(t), t)
            if kind == "note_off":
                self.last_release = position(t)

    def commit(self, position: float) -> list[Note]:
        notes = self.tokenizer.commit(position)
        self.call_notes += notes
        return notes

    def finish_call(self, position: float, start: int) -> list[Note]:
        """The hand-over: keys still down (held past the cap, or a lost note-off) and the pedal end
        now; every note of the call is committed."""
        self.tokenizer.release_keys(position)
        self.tokenizer.release_pedal(position)
        return self.commit(max(position, start) + 1)

    # -- state ------------------------------------------------------------------------
    def holding(self, position: float) -> int:
        """Keys down that hold back a hand-over (see LiveTokenizer.holding)."""
        return self.tokenizer.holding(position)

    @property
    def busy(self) -> bool:
        """Notes sound or wait to be committed: the commit ticker keeps running."""
        return bool(self.tokenizer.sounding or self.tokenizer.pending)

    def stuck(self, position: float) -> bool:
        """Keys are down, but none of them holds back a hand-over any more."""
        return bool(self.tokenizer.keys_down) and not self.tokenizer.holding(position)

    def may_play_at(self, step: int) -> bool:
        """The call's rhythm has the player's next onset due by `step`: from the last onset, `step`
        is no further than the last inter-onset interval. Whether the player goes on or is done,
        only `step` itself can tell (a player's note on the downbeat is the normal case)."""
        if len(self._onsets) < 2:
            return False
        previous, last = self._onsets
        return last < step <= last + (last - previous)

    def call_bars(self, steps_per_bar: int) -> int:
        """The call's length: bars from its start to the last release."""
        return math.ceil(max(self.last_release - self.call_start, 1) / steps_per_bar)

    def answer_bars(self, jam: JamSettings, steps_per_bar: int) -> int:
        """The answer's length: fixed, or the call's, capped."""
        if jam.answer_bars:
            return jam.answer_bars
        return max(1, min(self.call_bars(steps_per_bar), jam.max_answer_bars))

    def velocity(self, setting: str | int) -> int:
        """The answer's velocity: fixed, or the mean of the player's latest notes."""
        if setting != "follow":
            return int(setting)
        if not self.velocities:
            return DEFAULT_VELOCITY
        return int(round(sum(self.velocities) / len(self.velocities)))
