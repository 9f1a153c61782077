"""Steering an answer toward its call: masks that narrow the answer's sampling mask.

- key: the answer's pitches stay in the call's scale (found with Krumhansl–Schmuckler, or one the
  player names), except for a share `CHROMATIC_ALLOWANCE` of chromatic notes, spent as the answer
  goes (a chromatic note is allowed when the chromatic notes so far, it included, are within the
  allowance of the notes so far, it included);
- register: the answer's pitches stay within the call's lowest and highest pitch widened by
  `REGISTER_MARGIN` semitones;
- clashes: no new onset a semitone from an answer note still sounding, unless the call itself
  strikes such a clash;
- density: no more onsets in a bar than the call's mean per bar times the setting (rounded up);
  the rest of a full bar is silent, a rest the answer takes when it plays too much.

The masks never empty the mask: an onset is offered only where some pitch could follow it. The
values of the constants are measured by bench/answer_quality.py (README, "Shaping the answer").
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from daemon.answer_loop import AnswerOptions, MaskNarrowing
from daemon.codec import MAX_DURATION, OFFSET_BASE, PITCH_BASE, PITCH_MAX, PITCH_MIN, Note
from daemon.config import JamSettings
from daemon.grammar import HAVE_OFFSET, NEED_OFFSET, GrammarState
from daemon.keys import find_key, parse_key
from daemon.music_figures import clash_count

PITCHES = np.arange(PITCH_MIN, PITCH_MAX + 1)
PITCH_TOKENS = slice(PITCH_BASE, PITCH_BASE + len(PITCHES))
# The human continuations' share of notes outside the call's key, and a margin that holds 98.6%
# of their notes, on both test folders (bench/answer_quality.py prints both).
CHROMATIC_ALLOWANCE = 0.17
REGISTER_MARGIN = 7
KEY_MEMORY = 32  # the player's latest notes an accompaniment's key follows


@dataclass(frozen=True)
class Steering:
    """What an answer is held to, fixed when it starts (each a bool over PITCHES)."""

    scale: np.ndarray | None  # in the key; None: key off
    register: np.ndarray  # within the register (all True when free)
    avoid_clashes: bool
    onsets_per_bar: int  # 0: density free


def steering_for(call: Sequence[Note], key: str, register: str, clashes: str, density: str | float,
                 steps_per_bar: int, call_steps: int) -> Steering | None:
    """The steering of an answer to `call` (notes of `call_steps` steps) under the jam settings;
    None when nothing steers (the answer is then sampled exactly as without steering)."""
    found = None if key == "off" else find_key(call) if key == "auto" else parse_key(key)
    scale = None if found is None else found.scale[PITCHES % 12]
    within = np.ones(len(PITCHES), dtype=bool)
    if register == "follow" and call:
        pitches = [n.pitch for n in call]
        within = (PITCHES >= min(pitches) - REGISTER_MARGIN) & (PITCHES <= max(pitches) + REGISTER_MARGIN)
    avoid = clashes == "follow" and clash_count(call) == 0
    onsets = 0
    if density != "free" and call:
        onsets = math.ceil(len(call) / (call_steps / steps_per_bar) * float(density))
    if scale is None and within.all() and not avoid and not onsets:
        return None
    return Steering(scale, within, avoid, onsets)


def base_pitches(steering: Steering, answer: Sequence[Note]) -> np.ndarray:
    """bool over PITCHES: what key and register allow the next note after `answer` (the
    answer's notes so far, in order)."""
    allowed = steering.register.copy()
    if steering.scale is not None:
        chromatic = sum(not steering.scale[n.pitch - PITCH_MIN] for n in answer)
        if chromatic + 1 > CHROMATIC_ALLOWANCE * (len(answer) + 1):
            allowed &= steering.scale
    return allowed


def _ringing(answer: Sequence[Note], step: int) -> list[Note]:
    """The answer's notes still sounding at or after `step`."""
    found = []
    for note in reversed(answer):
        if note.start < step - MAX_DURATION:
            break  # earlier notes have ended (none is longer than MAX_DURATION)
        if note.start + note.duration > step:
            found.append(note)
    return found


def without_clashes(allowed: np.ndarray, answer: Sequence[Note], onset: int) -> np.ndarray:
    """`allowed` (a copy) without the pitches a semitone from an answer note sounding at `onset`."""
    allowed = allowed.copy()
    for note in _ringing(answer, onset):
        if note.start <= onset:
            for neighbour in (note.pitch - 1, note.pitch + 1):
                if PITCH_MIN <= neighbour <= PITCH_MAX:
                    allowed[neighbour - PITCH_MIN] = False
    return allowed


def allowed_pitches(steering: Steering, answer: Sequence[Note], onset: int) -> np.ndarray:
    """bool over PITCHES: the pitches a note starting at `onset` may take after `answer`."""
    allowed = base_pitches(steering, answer)
    return without_clashes(allowed, answer, onset) if steering.avoid_clashes else allowed


def steer(mask: np.ndarray, state: GrammarState, bar: int, steps_per_bar: int, steering: Steering,
          answer: Sequence[Note]) -> np.ndarray:
    """The answer mask (modified in place and returned) narrowed by the steering; `bar` is the
    step of the last bar line, `answer` the answer's notes so far."""
    if state.phase == HAVE_OFFSET and state.offset < steps_per_bar:
        mask[PITCH_TOKENS] &= allowed_pitches(steering, answer, bar + state.offset)
    elif state.phase == NEED_OFFSET:
        offsets = mask[OFFSET_BASE : OFFSET_BASE + steps_per_bar]  # a view: note onsets, not the bar line
        if steering.onsets_per_bar and sum(1 for n in answer if n.start >= bar) >= steering.onsets_per_bar:
            offsets[:] = False
            return mask
        base = base_pitches(steering, answer)
        ringing = _ringing(answer, bar) if steering.avoid_clashes else []
        room = min(int(base.sum()), int((base & (PITCHES > state.last_pitch)).sum()))
        if room > 2 * len(ringing):
            return mask  # each sounding note rules out two pitches at most: every onset keeps one
        candidates = np.flatnonzero(offsets)
        open_pitches = np.broadcast_to(base, (len(candidates), len(PITCHES))).copy()
        onsets = (bar + candidates)[:, None]
        starts, durations, pitches = np.array([(n.start, n.duration, n.pitch) for n in ringing], dtype=int).reshape(-1, 3).T
        ends = starts + durations
        rows, which = np.nonzero((starts <= onsets) & (onsets < ends))  # (candidate, ringing note) pairs
        for neighbour in (-1, 1):  # a few array operations, whatever the count: this runs for every onset token
            columns = pitches[which] + neighbour - PITCH_MIN
            inside = (columns >= 0) & (columns < len(PITCHES))
            open_pitches[rows[inside], columns[inside]] = False
        open_pitches[candidates == state.last_offset] &= PITCHES > state.last_pitch
        offsets[candidates] = open_pitches.any(axis=1)
    return mask


def narrowing(steering: Steering, steps_per_bar: int) -> MaskNarrowing:
    """The steering as one of the answer loop's mask narrowings."""

    def narrow(mask: np.ndarray, state: GrammarState, bar: int, notes: Sequence[Note]) -> None:
        steer(mask, state, bar, steps_per_bar, steering, notes)

    return narrow


def answer_options(jam: JamSettings, call: Sequence[Note], steps_per_bar: int, call_steps: int) -> AnswerOptions:
    """How an answer to `call` (notes of `call_steps` steps) is sampled under the jam settings."""
    steering = steering_for(call, jam.key, jam.register, jam.clashes, jam.density, steps_per_bar, call_steps)
    narrowings = () if steering is None else (narrowing(steering, steps_per_bar),)
    return AnswerOptions(jam.temperature, jam.top_p, jam.max_note_steps, narrowings)


class PlayerSteering:
    """An accompaniment's steering: with `key = "auto"` the scale is the key of the player's
    latest notes, found again as each comes in (the model's own notes do not count); a named key
    and `clashes` as for an answer. The accompaniment's pitch range is its register, so that an
    onset is offered only where a pitch in the range can follow it. Worker thread: the
    `Accompanist` tells it the player's notes."""

    def __init__(self, jam: JamSettings, steps_per_bar: int, pitch_range: tuple[int, int],
                 call: Sequence[Note] = ()) -> None:
        self.key, self.clashes, self.steps_per_bar = jam.key, jam.clashes, steps_per_bar
        self.in_range = (PITCHES >= pitch_range[0]) & (PITCHES <= pitch_range[1])
        self.heard: deque[Note] = deque(call, maxlen=KEY_MEMORY)
        self.steering = self._steering()

    def hear(self, note: Note) -> None:
        self.heard.append(note)
        if self.key == "auto":
            self.steering = self._steering()

    def _steering(self) -> Steering | None:
        found = steering_for(list(self.heard), self.key, "free", self.clashes, "free", self.steps_per_bar,
                             self.steps_per_bar)
        return None if found is None else replace(found, register=self.in_range)

    def narrow(self, mask: np.ndarray, state: GrammarState, bar: int, notes: Sequence[Note]) -> None:
        if self.steering is not None:
            steer(mask, state, bar, self.steps_per_bar, self.steering, notes)


def accompaniment_options(jam: JamSettings, steps_per_bar: int, pitch_range: tuple[int, int],
                          call: Sequence[Note] = ()) -> tuple[AnswerOptions, PlayerSteering]:
    """How an accompaniment in `pitch_range` samples under the jam settings (`call`: the player's
    notes so far), the way the daemon and the benchmarks build it."""
    options = AnswerOptions(jam.temperature, jam.top_p, jam.max_note_steps)
    return options, PlayerSteering(jam, steps_per_bar, pitch_range, call)
