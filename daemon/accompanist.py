"""Accompaniment's token logic, with no clock and no threads: the model plays along in one stream.

The `Accompanist` holds the conversation's stream and the engine fed with it. The model decides
ahead of playback (`decide`: every token sampled under `compose_mask`, narrowed to the
accompaniment's pitch range). The model knows piano music whole, not a part of it: where it
begins a note, it may mean one of the player's. So a note is begun only as often as the model
would put its pitch inside the range: once the onset is drawn, it stays with the probability
the model gives the range's pitches there, and is otherwise taken back and ruled out at that
decision point (within a step pitches rise, so an onset whose lowest note the model places
above the range has no note in it for the accompaniment). What playback reaches is fixed (`fix`: those notes are sent and
stay). A player's note goes into the stream at its onset (`player_onset`), where it belongs in
time, with the duration the model expects of it; its release brings the real one
(`player_note`). Each of these may belong before notes already in the stream: the stream and
the engine then roll back to the decision point just before it, and what follows is fed again:
the notes that sounded (the model's fixed notes, the player's) as they were, with the new note
in its place; what the model decided but has not sounded is taken back, and the next `decide`
decides it again.

Decision points are marks at states where the next token starts a note or a bar line
(NEED_OFFSET): the stream's mark and the engine's position. The engine keeps the last
ROLLBACK_TOKENS (decoding.py); a player's note that belongs before that is placed at the first
step the engine can still take it at (counted as moved), and a release too old to revise leaves
the note with the duration it was given at its onset (counted as unrevised).

The live daemon runs this on the inference worker (daemon/accompaniment.py); the property test
and the benchmarks drive it directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from daemon.answer_loop import AnswerOptions, MaskNarrowing, compose_mask
from daemon.codec import (
    DURATION_BASE,
    MAX_DURATION,
    OFFSET_BASE,
    PITCH_BASE,
    PITCH_MIN,
    Note,
    duration_token,
    is_duration,
    is_offset,
    token_value,
)
from daemon.grammar import HAVE_OFFSET, NEED_OFFSET, GrammarState, next_mask
from daemon.live_tokenizer import StreamMark, TokenStream
from daemon.sampling import sample
from daemon.steering import PITCH_TOKENS, PITCHES, PlayerSteering

OPEN_END = 1 << 30  # no end step: the player is still playing
DURATIONS = slice(DURATION_BASE, DURATION_BASE + MAX_DURATION)
SEEN_NOTES = 128  # the model's latest notes the narrowings see (steering looks back a bar or two)
log = logging.getLogger("antiphon.jam")


def pitch_range_narrowing(low: int, high: int) -> MaskNarrowing:
    """The model's notes only in low..high: pitches outside are masked, and a note at the step of
    the latest note is not begun where no pitch in the range can follow it (pitches rise within
    a step)."""
    below = slice(PITCH_BASE, PITCH_BASE + low - PITCH_MIN)
    above = slice(PITCH_BASE + high - PITCH_MIN + 1, PITCH_TOKENS.stop)

    def narrow(mask: np.ndarray, state: GrammarState, bar: int, notes) -> None:
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
class Placed:
    """A note in the stream since the accompanist began."""

    note: Note
    point: int  # index of the decision point just before its tokens
    player: bool
    fixed: bool  # it sounded (a player's note always has): a rollback feeds it again
    provisional: bool = False  # a player's note at its onset: its duration is the model's guess
    moved_from: int | None = None  # the step it was played at, when placed later


@dataclass
class RollbackStats:
    count: int = 0  # rollbacks that took back tokens
    seconds: list[float] = field(default_factory=list)  # each player's onset into the stream, rollback included
    redecide_seconds: list[float] = field(default_factory=list)  # onsets, then deciding to the lookahead again
    settle_seconds: list[float] = field(default_factory=list)  # each `settle` of the releases kept
    moved: int = 0  # player's notes placed later than played (they belonged before what the engine keeps)
    revised: int = 0  # player's notes whose duration was put right at their release
    unrevised: int = 0  # releases too old to revise: the onset's duration stays


class Accompanist:
    """One rolling stream, the model deciding ahead in a pitch range, the player's notes in time order."""

    def __init__(self, engine, stream: TokenStream, options: AnswerOptions, pitch_range: tuple[int, int],
                 rng: np.random.Generator, velocity: int, steering: PlayerSteering | None = None) -> None:
        self.engine = engine
        self.stream = stream
        narrowings = (*options.narrowings, pitch_range_narrowing(*pitch_range))
        self.options = AnswerOptions(options.temperature, options.top_p, options.max_note_steps,
                                     narrowings if steering is None else (*narrowings, steering.narrow))
        self.steering = steering
        self.in_range = (PITCHES >= pitch_range[0]) & (PITCHES <= pitch_range[1])
        self.rng = rng
        self.velocity = velocity
        self.points: list[DecisionPoint] = []
        self.placed: list[Placed] = []  # in stream order
        self.decided: list[Placed] = []  # the model's notes not yet fixed, in stream order
        self.model_notes: list[Note] = []  # what the narrowings see: the model's notes in the stream
        self.fixed_step = -1  # notes starting at or before this step are fixed
        self.stats = RollbackStats()
        self.releases: list[Note] = []  # player's notes released, for `settle`
        self.ruled_out: list[int] = []  # onset tokens of the latest decision point whose note was outside the range
        self._point()

    # -- the model ----------------------------------------------------------------------
    @property
    def frontier(self) -> int:
        """The step the stream has reached: its latest note's start, or its last bar line."""
        return self.stream.last_bar + max(self.stream.state.last_offset, 0)

    def decide(self, horizon: int, earliest: int, end: int = OPEN_END) -> list[Note]:
        """Decide the notes that start by `horizon` (at least up to `earliest`), and no bar line
        past it or at `end`. New notes start at or after `earliest` and after the fixed step,
        before `end`. A token drawn past that is not fed: the next call draws it again, from the
        same distribution. Returns the notes decided (not yet fixed)."""
        stream, engine, bar_len = self.stream, self.engine, self.stream.steps_per_bar
        earliest = max(earliest, self.fixed_step + 1)
        limit = max(horizon, earliest)
        new: list[Note] = []
        while True:
            state = stream.state
            if state.phase == NEED_OFFSET:
                if self._point():
                    self.ruled_out = []
            elif state.phase == HAVE_OFFSET and not self._onset_stays(state):
                point = self.points[-1]  # just before the onset token
                stream.rewind(point.stream)
                engine.rollback(point.engine_position)
                self.ruled_out.append(OFFSET_BASE + state.offset)
                continue
            mask = compose_mask(state, stream.last_bar, bar_len, earliest, end, self.options, self.model_notes)
            if state.phase == NEED_OFFSET:
                mask[self.ruled_out] = False
                if not mask.any():
                    break  # every onset ruled out and the bar line not to be written (the end)
            token = sample(engine.logits, mask, self.options.temperature, self.options.top_p, self.rng)
            if is_offset(token) and (stream.last_bar + token_value(token) > limit or (
                    token_value(token) == bar_len and stream.last_bar + bar_len >= end)):
                break  # past the horizon, or the bar line at the end (whoever plays next writes it)
            engine.feed([token])
            stream.append([token])
            if is_duration(token):
                start, pitch = stream.last_note
                note = Note(start, pitch, token_value(token), self.velocity)
                placed = Placed(note, len(self.points) - 1, player=False, fixed=False)
                self.placed.append(placed)
                self.decided.append(placed)
                self.model_notes.append(note)
                if len(self.model_notes) > 2 * SEEN_NOTES:
                    del self.model_notes[:SEEN_NOTES]
                new.append(note)
        return new

    def _onset_stays(self, state: GrammarState) -> bool:
        """A drawn onset stays with the probability the model gives the range's pitches after it."""
        allowed = next_mask(state)[PITCH_TOKENS]
        logits = self.engine.logits[PITCH_TOKENS][allowed] / max(self.options.temperature, 1e-6)
        weights = np.exp(logits - logits.max())
        inside = weights[self.in_range[allowed]].sum()
        return self.rng.random() * weights.sum() < inside

    def fix(self, step: int) -> list[Note]:
        """Playback reaches `step`: the decided notes starting at or before it are fixed (sent,
        never taken back). Returns them in order."""
        self.fixed_step = max(self.fixed_step, step)
        fixed: list[Note] = []
        while self.decided and self.decided[0].note.start <= step:
            placed = self.decided.pop(0)
            placed.fixed = True
            fixed.append(placed.note)
        return fixed

    # -- the player ---------------------------------------------------------------------
    def player_onset(self, start: int, pitch: int, velocity: int) -> Note | None:
        """A key goes down at `start`: the note goes in now, with the duration the model expects
        (its release puts that right: player_note). Returns the note as placed, or None when the
        stream has this pitch at this step already (a key struck twice within a step)."""
        began = time.perf_counter()
        note = Note(start, pitch, 0, velocity)  # duration 0: the model's guess, when it goes in
        if self._find(note) is not None:
            return None
        placed = self._insert(Placed(note, 0, player=True, fixed=True, provisional=True))
        if self.steering is not None:
            self.steering.hear(placed.note)
        self.stats.seconds.append(time.perf_counter() - began)
        return placed.note

    def player_note(self, note: Note) -> None:
        """A player's note as the listener commits it (released): its real length is kept for
        `settle`, which puts its onset's note right (or, if it had none, puts it in where it
        belongs). A release changes nothing that is about to sound, so it can wait for a quiet moment."""
        self.releases.append(note._replace(duration=min(note.duration, MAX_DURATION)))

    def settle(self) -> None:
        """The releases kept since the last call go in: one rollback to the earliest onset they
        change, and what sounded since fed again once."""
        if not self.releases:
            return
        began = time.perf_counter()
        releases, self.releases = self.releases, []
        revised: list[tuple[Placed, Note]] = []
        for note in releases:
            onset = self._find(note)
            if onset is None:
                placed = self._insert(Placed(note, 0, player=True, fixed=True))
                if self.steering is not None:
                    self.steering.hear(placed.note)
            elif onset.note.duration == note.duration or not self._revisable(onset):
                self.stats.unrevised += onset.note.duration != note.duration
                onset.provisional = False
            else:
                revised.append((onset, onset.note._replace(duration=note.duration)))
        if revised:
            self.stats.revised += len(revised)
            self._rebuild(min(onset.point for onset, _ in revised),
                          [Placed(note, 0, player=True, fixed=True) for _, note in revised],
                          drop={id(onset) for onset, _ in revised})
        self.stats.settle_seconds.append(time.perf_counter() - began)

    def settle_tokens(self) -> int:
        """About how many tokens `settle` would feed again now."""
        onsets = [self._find(note) for note in self.releases]
        points = [onset.point for onset in onsets if onset is not None]
        return self.engine.position - self.points[min(points)].engine_position if points else 3 * len(self.releases)

    def unreleased(self) -> set[tuple[int, int]]:
        """(start as played, pitch) of the player's notes that went in at their onsets and whose
        release has not come: when it does, after the accompaniment, it need not go in again."""
        return {(p.note.start if p.moved_from is None else p.moved_from, p.note.pitch)
                for p in self.placed if p.player and p.provisional}

    def finish(self) -> None:
        """The accompaniment ends: the releases kept go in, what was decided and not fixed is
        taken back."""
        self.settle()
        if self.decided:
            self._rebuild(self.decided[0].point, [], counted=False)

    # -- the stream -----------------------------------------------------------------------
    def _find(self, note: Note) -> Placed | None:
        """The player's note placed at the onset of `note` (same pitch, same start or moved after it)."""
        for placed in reversed(self.placed):
            if placed.player and placed.provisional and placed.note.pitch == note.pitch and note.start in (
                    placed.note.start, placed.moved_from):
                return placed
            if placed.note.start < note.start - MAX_DURATION:
                return None
        return None

    def _reach(self) -> int:
        """The earliest decision point the engine can still return to."""
        limit = self.engine.rollback_limit()
        index = len(self.points) - 1
        while index > 0 and self.points[index - 1].engine_position >= limit:
            index -= 1
        return index

    def _revisable(self, placed: Placed) -> bool:
        return placed.point >= self._reach()

    def _insert(self, placed: Placed) -> Placed:
        """Put a player's note in where it belongs, or, when that is before what the engine keeps,
        at the first step after it."""
        reach = self._reach()
        index = self._latest_point_taking(placed.note, reach)
        if index is None:
            self.stats.moved += 1
            floor = self.points[reach].stream
            log.debug("player's note %s moved: it belongs before what the engine keeps (from step %s, pitch %s)",
                      placed.note, *(floor.last_note or (floor.last_bar, "-")))
            start = max(placed.note.start, floor.last_bar)
            if floor.last_note is not None and (start, placed.note.pitch) <= floor.last_note:
                start = floor.last_note[0] + 1
            end = placed.note.start + placed.note.duration
            placed.moved_from = placed.note.start
            placed.note = placed.note._replace(start=start, duration=min(MAX_DURATION, max(1, end - start)))
            index = self._latest_point_taking(placed.note, reach)
        return self._rebuild(index, [placed])

    def _latest_point_taking(self, note: Note, reach: int) -> int | None:
        for index in range(len(self.points) - 1, reach - 1, -1):
            if self.points[index].stream.can_take(note):
                return index
        return None

    def _rebuild(self, index: int, new: list[Placed], drop: set[int] = frozenset(), counted: bool = True) -> Placed | None:
        """Roll back to decision point `index` and feed again what sounded after it, with `new`
        in its place and without the notes whose id() is in `drop`; the rest (decided, not
        sounded) is taken back. Returns the (last) new note as placed."""
        first = len(self.placed)
        while first > 0 and self.placed[first - 1].point >= index:
            first -= 1
        kept = [p for p in self.placed[first:] if p.fixed and id(p) not in drop] + new
        kept.sort(key=lambda p: (p.note.start, p.note.pitch, not p.player))
        point = self.points[index]
        if self.stream.count != point.stream.count:
            self.stream.rewind(point.stream)
            self.engine.rollback(point.engine_position)
            if counted:
                self.stats.count += 1
        del self.points[index + 1:]
        del self.placed[first:]
        self.decided = [p for p in self.decided if p.point < index]
        self.model_notes = [p.note for p in self.placed[-SEEN_NOTES:] if not p.player]
        seen = set()
        for placed in kept:
            if (placed.note.start, placed.note.pitch) in seen:
                continue  # a model's note the player struck too: the player's is the one in the stream
            seen.add((placed.note.start, placed.note.pitch))
            self._append(placed)
        return new[-1] if new else None

    def _append(self, placed: Placed) -> None:
        note = placed.note
        tokens = self.stream.note_tokens(note)
        if note.duration == 0:  # a player's onset, going in for the first time: the model guesses how long
            tokens = tokens[:-1]
            self.stream.append(tokens)
            logits = self.engine.feed(tokens)
            mask = next_mask(self.stream.state)[DURATIONS]
            duration = int(np.argmax(np.where(mask, logits[DURATIONS], -np.inf))) + 1
            placed.note = note = note._replace(duration=duration)
            self.stream.append([duration_token(duration)])
            self.engine.feed([duration_token(duration)])
        else:
            self.stream.append(tokens)
            self.engine.feed(tokens)
        placed.point = len(self.points) - 1
        self.placed.append(placed)
        if not placed.player:
            self.model_notes.append(note)
        self._point()

    def _point(self) -> bool:
        """Record the decision point here (once per stream position); True if it is new."""
        if self.points and self.points[-1].stream.count == self.stream.count:
            return False
        self.points.append(DecisionPoint(self.stream.mark(), self.engine.position))
        return True
