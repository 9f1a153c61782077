"""The answer's token loop offline, exactly as the daemon runs it: no clock, no threads."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.answer_loop import AnswerOptions, compose_mask, generate_answer
from daemon.codec import DURATION_BASE, OFFSET_BASE, Note, decode
from daemon.engine import Engine
from daemon.grammar import HAVE_PITCH, NEED_OFFSET, GrammarState, accepts
from daemon.live_tokenizer import TokenStream
from daemon.sampling import make_generator

CALL = [Note(0, 60, 2, 90), Note(4, 64, 2, 90), Note(8, 67, 2, 90), Note(12, 72, 2, 90)]
OPTIONS = AnswerOptions(temperature=1.0, top_p=1.0, max_note_steps=8)


@pytest.fixture(scope="module")
def engine(tiny_weights):
    return Engine.load(tiny_weights, "cpu")


def primed(engine: Engine) -> TokenStream:
    stream = TokenStream(16)
    for note in CALL:
        stream.append(stream.note_tokens(note))
    engine.reset(list(stream.tokens))
    return stream


def answer(engine, seed: int, options: AnswerOptions = OPTIONS, start: int = 16, end: int = 48):
    stream = primed(engine)
    before = list(stream.tokens)
    result = generate_answer(engine, stream, start, end, options, make_generator(seed), velocity=70)
    return before, stream, result


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_an_offline_answer_is_grammatical_and_ends_at_the_bar_line(engine, seed):
    before, stream, result = answer(engine, seed)
    assert list(stream.tokens) == before + result.stream_tokens
    closed = list(stream.tokens) + stream.bar_tokens_to(48)
    assert accepts(closed)
    assert stream.last_bar + stream.steps_per_bar == 48  # it stopped just before the bar line at the end
    notes = [note for note, _ in result.notes]
    assert notes == sorted(notes)
    assert all(16 <= n.start and n.start + n.duration <= 48 and n.duration <= 8 and n.velocity == 70 for n in notes)
    assert [(n.start, n.pitch, n.duration) for n in decode(closed) if n.start >= 16] == [
        (n.start, n.pitch, n.duration) for n in notes]
    prefix = len(result.stream_tokens) - result.tokens  # the bar lines up to the start, fed, not sampled
    assert prefix == len(primed(engine).bar_tokens_to(16))


def test_the_same_seed_gives_the_same_answer(engine):
    assert answer(engine, 5)[2].notes == answer(engine, 5)[2].notes


def test_extra_narrowings_apply_after_the_answer_mask(engine):
    def sixteenths(mask: np.ndarray, state: GrammarState, bar: int, notes) -> None:
        if state.phase == HAVE_PITCH:
            mask[DURATION_BASE + 1 :] = False  # duration 1 only (always allowed: answer_mask never forbids it)

    options = AnswerOptions(1.0, 1.0, 8, narrowings=(sixteenths,))
    mask = compose_mask(GrammarState(HAVE_PITCH, 3, 60, 3), 16, 16, 16, 48, options)
    assert np.flatnonzero(mask).tolist() == [DURATION_BASE]
    for seed in range(3):
        notes = [note for note, _ in answer(engine, seed, options)[2].notes]
        assert notes and all(n.duration == 1 for n in notes)


def test_a_narrowing_sees_the_answer_so_far(engine):
    def two_notes(mask: np.ndarray, state: GrammarState, bar: int, notes) -> None:
        if state.phase == NEED_OFFSET and len(notes) >= 2:
            mask[OFFSET_BASE : OFFSET_BASE + 16] = False  # only the bar line: the rest is silence

    options = AnswerOptions(1.0, 1.0, 8, narrowings=(two_notes,))
    counts = [len(answer(engine, seed, options)[2].notes) for seed in range(4)]
    assert max(counts) == 2
