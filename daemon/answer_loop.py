"""The answer's token loop, exactly as the daemon runs it, with no clock and no threads.

`generate_answer` samples an answer from an engine primed with the stream: bar lines up to the
start, then notes until the bar line at `end` (not written: the next phrase writes it). The live
daemon (daemon/answerer.py) runs this same function on its worker thread and supplies what
depends on the clock through a `Pacing`: the earliest onset playback still allows, a wait while
generation runs too far ahead, a stop flag and a callback per note. Offline, the default
`Pacing` has none of these, so a benchmark gets the answer the daemon would give a machine fast
enough never to drop an onset.

The sampler's mask is composed in one place, `compose_mask`: the grammar, narrowed by
`answer_mask` (bar lines where the meter puts them, onsets inside the answer), then by each
of `AnswerOptions.narrowings` in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from daemon.codec import BAR, DURATION_BASE, MAX_OFFSET, OFFSET_BASE, Note, is_duration, is_offset, token_value
from daemon.grammar import HAVE_OFFSET, HAVE_PITCH, NEED_OFFSET, GrammarState, next_mask
from daemon.live_tokenizer import TokenStream
from daemon.sampling import sample

DEFAULT_VELOCITY = 80

# (mask, grammar state, step of the last bar line, the answer's notes so far) -> None: narrows
# the mask in place. It must leave some token allowed; it should never forbid the bar line, which
# is how an answer ends.
MaskNarrowing = Callable[[np.ndarray, GrammarState, int, Sequence[Note]], None]


@dataclass(frozen=True)
class AnswerOptions:
    temperature: float
    top_p: float
    max_note_steps: int  # the longest note an answer may play
    narrowings: tuple[MaskNarrowing, ...] = ()


def answer_mask(state: GrammarState, bar: int, steps_per_bar: int, earliest: int, end: int, longest: int) -> np.ndarray:
    """The grammar's mask narrowed for an answer: bar lines only where the meter puts them, notes
    only at steps in [earliest, end), durations at most `longest` and never past `end`."""
    mask = next_mask(state).copy()
    if state.phase == NEED_OFFSET:
        offsets = np.arange(MAX_OFFSET + 1)
        starts = bar + offsets
        notes = (offsets < steps_per_bar) & (starts >= earliest) & (starts < end)
        mask[OFFSET_BASE : OFFSET_BASE + MAX_OFFSET + 1] &= notes | (offsets == steps_per_bar)
    elif state.phase == HAVE_OFFSET:
        if state.offset == steps_per_bar:
            mask[:] = False
            mask[BAR] = True
        else:
            mask[BAR] = False
    elif state.phase == HAVE_PITCH:
        cap = max(1, min(longest, end - (bar + state.offset)))
        mask[DURATION_BASE + cap :] = False
    return mask


def compose_mask(state: GrammarState, bar: int, steps_per_bar: int, earliest: int, end: int,
                 options: AnswerOptions, notes: Sequence[Note] = ()) -> np.ndarray:
    """Every restriction on the next answer token, in one place (`notes`: the answer's so far)."""
    mask = answer_mask(state, bar, steps_per_bar, earliest, end, options.max_note_steps)
    for narrow in options.narrowings:
        narrow(mask, state, bar, notes)
    return mask


class Pacing:
    """What the clock adds to the token loop; this base class is the offline answer (no clock)."""

    def stopped(self) -> bool:
        return False

    def wait_ahead(self, stream: TokenStream) -> bool:
        """Before an onset: True after waiting (the loop checks again), False to go on."""
        return False

    def earliest(self, start: int) -> int:
        """The first step a note may start at now."""
        return start

    def token_took(self, seconds: float) -> None:
        """One token was sampled and fed in `seconds`."""

    def note(self, note: Note, tokens: list[int]) -> None:
        """A note is complete; `tokens` are the stream tokens it adds (bar lines before it included)."""


OFFLINE = Pacing()


@dataclass
class Answer:
    notes: list[tuple[Note, list[int]]] = field(default_factory=list)  # each note with its tokens
    tail: list[int] = field(default_factory=list)  # tokens after the last note (never played)
    tokens: int = 0  # sampled (the bar-line prefix not counted)
    busy_s: float = 0.0  # inference time

    @property
    def stream_tokens(self) -> list[int]:
        """Everything the answer added to the stream, in order."""
        return [token for _, tokens in self.notes for token in tokens] + self.tail


def generate_answer(engine, stream: TokenStream, start: int, end: int, options: AnswerOptions,
                    rng: np.random.Generator, velocity: int = DEFAULT_VELOCITY, pacing: Pacing = OFFLINE,
                    answer: Answer | None = None) -> Answer:
    """Extend `stream` (and `engine`, primed with it) by an answer with onsets in [start, end).

    `start` is a stream step at or after the stream's notes, `end` a bar line after it; the answer
    stops just before the bar line at `end`. It is written into `answer` as it grows (the live
    daemon reports a stopped answer's counts from there) and returned."""
    answer = Answer() if answer is None else answer
    began = time.perf_counter()
    pending = stream.bar_tokens_to(start)  # committed with the first note
    if pending:
        stream.append(pending)
        engine.feed(pending)
    answer.busy_s += time.perf_counter() - began
    bar_len = stream.steps_per_bar
    played: list[Note] = []  # the narrowings' view of the answer so far
    while not pacing.stopped():
        state = stream.state
        if state.phase == NEED_OFFSET and pacing.wait_ahead(stream):
            continue
        earliest = pacing.earliest(start)
        begun = time.perf_counter()
        mask = compose_mask(state, stream.last_bar, bar_len, earliest, end, options, played)
        token = sample(engine.logits, mask, options.temperature, options.top_p, rng)
        if is_offset(token) and token_value(token) == bar_len and stream.last_bar + bar_len >= end:
            break  # the bar line that ends the answer: the next phrase writes it
        engine.feed([token])
        stream.append([token])
        pending.append(token)
        elapsed = time.perf_counter() - begun
        answer.busy_s += elapsed
        answer.tokens += 1
        pacing.token_took(elapsed)
        if is_duration(token):
            last = stream.last_note
            note = Note(last[0], last[1], token_value(token), velocity)
            answer.notes.append((note, pending))
            played.append(note)
            pacing.note(note, pending)
            pending = []
    answer.tail = pending
    return answer
