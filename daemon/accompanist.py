"""Accompaniment's token logic, with no clock and no threads: the model plays along in one stream.

The `Accompanist` holds the conversation's stream and the engine fed with it. The model decides
ahead of playback (`decide`: every token sampled under `compose_mask`, narrowed to the
accompaniment's pitch range); what playback reaches is fixed (`fix`: those notes are sent and
stay); a player's note goes into the stream where it belongs in time (`player_note`). When that
is before something the model decided but has not sounded, the stream and the engine roll back
to the decision point just before it, the player's note goes in, and the next `decide`
re-decides the rest. A player's note that belongs before a note already fixed (it arrived too
late) is placed at the current step instead, so the stream stays grammatical and in time order.

Decision points are marks at every state where the next token starts a note or a bar line
(NEED_OFFSET): the stream's mark and the engine's position. Nothing before the latest fixed
model note or player's note (the floor) is ever taken back.

The live daemon runs this on the inference worker (daemon/accompaniment.py); the property test
and bench/accompany.py drive it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from daemon.answer_loop import AnswerOptions, MaskNarrowing, compose_mask
from daemon.codec import MAX_DURATION, OFFSET_BASE, PITCH_BASE, PITCH_MAX, PITCH_MIN, Note, is_duration, is_offset, token_value
from daemon.grammar import HAVE_OFFSET, NEED_OFFSET, GrammarState
from daemon.live_tokenizer import StreamMark, TokenStream
from daemon.sampling import sample

OPEN_END = 1 << 30  # no end step: the player is still playing


def pitch_range_narrowing(low: int, high: int) -> MaskNarrowing:
    """The model's notes only in low..high: pitches outside are masked, and a note at the step of
    the latest note is not begun where no pitch in the range can follow it (pitches rise within
    a step)."""
    below = slice(PITCH_BASE, PITCH_BASE + low - PITCH_MIN)
    above = slice(PITCH_BASE + high - PITCH_MIN + 1, PITCH_BASE + PITCH_MAX - PITCH_MIN + 1)

    def narrow(mask: np.ndarray, state: GrammarState, bar: int) -> None:
        if state.phase == HAVE_OFFSET:
            mask[below] = False
            mask[above] = False
        elif state.phase == NEED_OFFSET and state.last_offset >= 0 and state.last_pitch >= high:
            mask[OFFSET_BASE + state.last_offset] = False

    return narrow


class DecisionPoint(NamedTuple):
    stream: StreamMark
    engine_position: int


@dataclass
class Decided:
    note: Note
    point: int  # index of the decision point just before its tokens


@dataclass
class RollbackStats:
    count: int = 0
    seconds: list[float] = field(default_factory=list)  # each rollback and the player's note going in
    resets: int = 0  # rollbacks deeper than the engine keeps: re-primed from the stream instead
    moved: int = 0  # player's notes placed at the current step (they arrived after a later step sounded)


class Accompanist:
    """One rolling stream, the model deciding ahead in a pitch range, the player's notes in time order."""

    def __init__(self, engine, stream: TokenStream, options: AnswerOptions, pitch_range: tuple[int, int],
                 rng: np.random.Generator, velocity: int) -> None:
        self.engine = engine
        self.stream = stream
        self.options = AnswerOptions(options.temperature, options.top_p, options.max_note_steps,
                                     (*options.narrowings, pitch_range_narrowing(*pitch_range)))
        self.rng = rng
        self.velocity = velocity
        self.points: list[DecisionPoint] = []
        self.floor = 0  # the earliest decision point a rollback may return to
        self.decided: list[Decided] = []  # model notes decided, not yet fixed, in stream order
        self.fixed_step = -1  # notes starting at or before this step are fixed
        self.stats = RollbackStats()
        self.tokens = 0  # sampled
        self._point()

    # -- the model ----------------------------------------------------------------------
    @property
    def frontier(self) -> int:
        """The step the stream has reached: its latest note's start, or its last bar line."""
        return self.stream.last_bar + max(self.stream.state.last_offset, 0)

    def decide(self, horizon: int, earliest: int, end: int = OPEN_END) -> list[Note]:
        """Decide until the stream reaches past `horizon` (or the bar line at `end`, which is not
        written). New notes start at or after `earliest` and after the fixed step, before `end`.
        Returns the notes decided (not yet fixed)."""
        stream, engine, bar_len = self.stream, self.engine, self.stream.steps_per_bar
        earliest = max(earliest, self.fixed_step + 1)
        new: list[Note] = []
        while True:
            state = stream.state
            if state.phase == NEED_OFFSET:
                self._point()
                if self.frontier > horizon:
                    break
            mask = compose_mask(state, stream.last_bar, bar_len, earliest, end, self.options)
            token = sample(engine.logits, mask, self.options.temperature, self.options.top_p, self.rng)
            if is_offset(token) and token_value(token) == bar_len and stream.last_bar + bar_len >= end:
                break  # the bar line at the end: whoever plays next writes it
            engine.feed([token])
            stream.append([token])
            self.tokens += 1
            if is_duration(token):
                start, pitch = stream.last_note
                note = Note(start, pitch, token_value(token), self.velocity)
                self.decided.append(Decided(note, len(self.points) - 1))
                new.append(note)
        return new

    def fix(self, step: int) -> list[Note]:
        """Playback reaches `step`: the decided notes starting at or before it are fixed (sent,
        never taken back). Returns them in order."""
        self.fixed_step = max(self.fixed_step, step)
        fixed: list[Note] = []
        while self.decided and self.decided[0].note.start <= step:
            decided = self.decided.pop(0)
            fixed.append(decided.note)
            self.floor = max(self.floor, decided.point + 1)  # the point right after its tokens
        return fixed

    # -- the player ---------------------------------------------------------------------
    def player_note(self, note: Note) -> Note:
        """Put a player's note into the stream where it belongs (see the module's docstring);
        returns the note as placed."""
        began = time.perf_counter()
        placed = self._placeable(note)
        back_to = max(i for i in range(self.floor, len(self.points)) if self.points[i].stream.can_take(placed))
        if back_to < len(self.points) - 1:
            self._rollback(back_to)
        tokens = self.stream.note_tokens(placed)
        self.stream.append(tokens)
        self.engine.feed(tokens)
        self._point()
        self.floor = len(self.points) - 1
        self.stats.seconds.append(time.perf_counter() - began)
        return placed

    def _placeable(self, note: Note) -> Note:
        """The note, or, when it would go before what is fixed, the note moved to the first step
        after it (its end kept where it can be)."""
        floor = self.points[self.floor].stream
        start = max(note.start, floor.last_bar)
        if floor.last_note is not None and (start, note.pitch) <= floor.last_note:
            start = floor.last_note[0] + 1
        if start == note.start:
            return note
        self.stats.moved += 1
        duration = min(MAX_DURATION, max(1, note.start + note.duration - start))
        return note._replace(start=start, duration=duration)

    def finish(self) -> None:
        """The accompaniment ends: what was decided and not fixed is taken back."""
        if self.floor < len(self.points) - 1:
            self._rollback(self.floor, counted=False)

    def _rollback(self, index: int, counted: bool = True) -> None:
        point = self.points[index]
        self.stream.rewind(point.stream)
        if point.engine_position >= self.engine.rollback_limit():
            self.engine.rollback(point.engine_position)
        else:
            self.engine.reset(list(self.stream.tokens))
            self.stats.resets += 1
            for i, kept in enumerate(self.points[: index + 1]):  # positions now count from the reset
                self.points[i] = kept._replace(engine_position=self.engine.position - (point.stream.count - kept.stream.count))
        del self.points[index + 1:]
        self.decided = [d for d in self.decided if d.point < index]
        if counted:
            self.stats.count += 1

    def _point(self) -> None:
        """Record the decision point here (once per stream position)."""
        if not self.points or self.points[-1].stream.count != self.stream.count:
            self.points.append(DecisionPoint(self.stream.mark(), self.engine.position))
