"""The player's side of an exchange: the call's notes, its length, its loudness.

Wraps the `LiveTokenizer` (note events at stream positions in, notes committed in encoder order
out) with what the session needs to know about the call: where it began and when the player
last let go (the answer's length follows the call's), whether a key is stuck, and the velocity
an answer that follows the player plays at. Positions are stream steps (floats); loop thread only.
"""

from __future__ import annotations

import math
from collections import deque

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

    # -- events -----------------------------------------------------------------------
    def begin_call(self, start: int) -> None:
        """A new call begins at the bar line `start`."""
        self.call_start = start
        self.call_notes = []
        self._onsets.clear()

    def note_on(self, pitch: int, velocity: int, position: float) -> None:
        self.velocities.append(velocity)
        self.tokenizer.note_on(pitch, velocity, position)
        step = round(position)
        if not self._onsets or self._onsets[-1] != step:
            self._onsets.append(step)

    def note_off(self, pitch: int, position: float) -> None:
        self.tokenizer.note_off(pitch, position)
        self.last_release = position

    def pedal(self, down: bool, position: float) -> None:
        self.tokenizer.pedal(down, position)

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
