"""The strict grammar: kind order, the rules beyond it, masks, and walks that only take masked-in tokens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.codec import (
    BAR,
    PITCH_MAX,
    PITCH_MIN,
    VOCAB_SIZE,
    Note,
    bar_times,
    decode,
    duration_token,
    encode,
    encode_normalised,
    is_duration,
    offset_token,
    pitch_token,
)
from daemon.grammar import INITIAL, GrammarError, accepts, advance, masks_along, next_mask, walk

O, P, D = offset_token, pitch_token, duration_token
ALL_OFFSETS = {O(o) for o in range(32)}
ALL_PITCHES = {P(p) for p in range(PITCH_MIN, PITCH_MAX + 1)}
ALL_DURATIONS = {duration_token(d) for d in range(1, 33)}


def allowed(tokens: list[int]) -> set[int]:
    return set(np.flatnonzero(next_mask(walk(tokens))).tolist())


def random_walk(seed: int, length: int) -> list[int]:
    """Tokens picked uniformly among the masked-in ones; fails on an empty mask."""
    rng = np.random.default_rng(seed)
    state, tokens = INITIAL, []
    for _ in range(length):
        choices = np.flatnonzero(next_mask(state))
        assert choices.size, f"empty mask after {len(tokens)} tokens"
        token = int(rng.choice(choices))
        state = advance(state, token)
        tokens.append(token)
    return tokens


def assert_clean_notes(notes: list[Note]) -> None:
    keys = [(n.start, n.pitch) for n in notes]
    assert keys == sorted(set(keys)), "notes not strictly time-ordered"
    for note in notes:
        assert note.start >= 0
        assert PITCH_MIN <= note.pitch <= PITCH_MAX
        assert 1 <= note.duration <= 32


# --- kind order -----------------------------------------------------------------------------


def test_a_stream_opens_with_a_lone_bar() -> None:
    assert allowed([]) == {BAR}
    assert not accepts([O(0)])


def test_after_a_bar_come_offsets_only() -> None:
    assert allowed([BAR]) == ALL_OFFSETS


def test_after_an_offset_come_a_bar_or_a_pitch() -> None:
    assert allowed([BAR, O(4)]) == {BAR} | ALL_PITCHES


def test_after_a_pitch_come_durations_only() -> None:
    assert allowed([BAR, O(4), P(60)]) == ALL_DURATIONS


def test_after_a_duration_come_offsets_only() -> None:
    assert allowed([BAR, O(4), P(60), D(4)]) == {O(o) for o in range(4, 32)}


# --- rules beyond kind order ------------------------------------------------------------------


def test_a_bar_offset_is_at_least_1() -> None:
    assert allowed([BAR, O(0)]) == ALL_PITCHES
    assert not accepts([BAR, O(0), BAR])
    assert accepts([BAR, O(1), BAR])


def test_offset_31_can_only_close_the_bar() -> None:
    assert allowed([BAR, O(31)]) == {BAR}
    assert not accepts([BAR, O(31), P(60)])


def test_note_offsets_in_a_bar_never_decrease() -> None:
    head = [BAR, O(10), P(60), D(1)]
    assert allowed(head) == {O(o) for o in range(10, 32)}
    assert not accepts([*head, O(9), P(72), D(1)])
    assert accepts([*head, O(10), P(61), D(1), O(11), P(21), D(1)])


def test_at_equal_offset_pitches_strictly_increase() -> None:
    head = [BAR, O(5), P(60), D(4)]
    assert allowed([*head, O(5)]) == {P(p) for p in range(61, PITCH_MAX + 1)}
    assert not accepts([*head, O(5), P(60)])
    assert not accepts([*head, O(5), P(59)])


def test_an_offset_with_no_higher_pitch_left_is_masked_out() -> None:
    assert allowed([BAR, O(5), P(PITCH_MAX), D(4)]) == {O(o) for o in range(6, 32)}


def test_a_bar_offset_exceeds_every_note_offset_in_its_bar() -> None:
    head = [BAR, O(3), P(60), D(1), O(10), P(60), D(1)]
    assert not accepts([*head, O(10), BAR])
    assert not accepts([*head, O(4), BAR])
    assert accepts([*head, O(11), BAR])
    assert BAR not in allowed([*head, O(10)])


def test_a_new_bar_starts_afresh() -> None:
    head = [BAR, O(20), P(100), D(1), O(21), BAR]
    assert allowed(head) == ALL_OFFSETS
    assert accepts([*head, O(0), P(21), D(1)])


def test_masks_say_exactly_what_advance_accepts() -> None:
    states = {INITIAL}
    state = INITIAL
    for token in random_walk(seed=7, length=400):
        state = advance(state, token)
        states.add(state)
    for state in states:
        mask = next_mask(state)
        for token in range(VOCAB_SIZE):
            try:
                advance(state, token)
                took = True
            except GrammarError:
                took = False
            assert took == bool(mask[token]), (state, token)


def test_masks_are_read_only() -> None:
    mask = next_mask(INITIAL)
    assert mask.shape == (VOCAB_SIZE,) and mask.dtype == bool
    with pytest.raises(ValueError):
        mask[1] = True


# --- errors -----------------------------------------------------------------------------------


def test_a_refused_token_is_named_in_the_error() -> None:
    with pytest.raises(GrammarError, match=r"token 72 \(Pitch_60\) is not allowed after the stream start"):
        advance(INITIAL, P(60))
    with pytest.raises(GrammarError, match=r"^token 4: .*Pitch_59"):
        walk([BAR, O(5), P(60), D(4), P(59)])


@pytest.mark.parametrize("token", [-1, VOCAB_SIZE])
def test_a_token_outside_the_vocabulary_is_refused(token: int) -> None:
    with pytest.raises(GrammarError, match="outside 0..152"):
        advance(walk([BAR]), token)


# --- walks over masked-in tokens --------------------------------------------------------------


def ends_with_complete_note(tokens: list[int]) -> list[int]:
    last = max((i for i, t in enumerate(tokens) if is_duration(t)), default=-1)
    return tokens[: last + 1]


def assert_is_its_own_encoding(tokens: list[int]) -> None:
    """A valid stream ending in a note is exactly what the encoder makes of its notes and bars."""
    tokens = ends_with_complete_note(tokens)
    notes = decode(tokens)
    assert_clean_notes(notes)
    if tokens:
        assert encode_normalised(notes, bar_times(tokens)) == tokens


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_walk_over_masks_decodes_cleanly(seed: int) -> None:
    tokens = random_walk(seed, length=3000)
    notes = decode(tokens)
    assert len(notes) > 100  # the walk really made music, not only bars
    assert sum(t == BAR for t in tokens) > 20
    assert_clean_notes(notes)
    assert_is_its_own_encoding(tokens)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_walk_over_masks_decodes_to_its_own_encoding(data: st.DataObject) -> None:
    state, tokens = INITIAL, []
    for _ in range(data.draw(st.integers(0, 120), label="length")):
        choices = np.flatnonzero(next_mask(state)).tolist()
        assert choices
        token = choices[data.draw(st.integers(0, len(choices) - 1))]
        state = advance(state, token)
        tokens.append(token)
    assert accepts(tokens)
    assert_is_its_own_encoding(tokens)


# --- masks_along --------------------------------------------------------------------------------


def assert_rows_match_prefixes(tokens: list[int]) -> None:
    rows = masks_along(tokens)
    assert rows.shape == (len(tokens), VOCAB_SIZE)
    state = INITIAL
    for index, token in enumerate(tokens):
        state = advance(state, token)
        assert np.array_equal(rows[index], next_mask(state)), index


def test_masks_along_an_encoding_are_next_mask_after_each_prefix() -> None:
    notes = [Note(0, 60, 4), Note(0, 64, 36), Note(5, 40, 2), Note(40, 62, 4), Note(77, 100, 1)]
    assert_rows_match_prefixes(encode(notes, bar_starts=[16, 40, 52]))


def test_masks_along_a_random_walk_are_next_mask_after_each_prefix() -> None:
    assert_rows_match_prefixes(random_walk(seed=3, length=1000))


def test_masks_along_an_empty_stream_has_no_rows() -> None:
    assert masks_along([]).shape == (0, VOCAB_SIZE)


def test_masks_along_a_flawed_stream_restarts_at_the_next_bar() -> None:
    tokens = [BAR, O(5), P(60), D(4), O(2), BAR, O(0), P(60), D(1)]  # offset 2 goes back in time
    assert not accepts(tokens[:5])
    rows = masks_along(tokens)
    assert set(np.flatnonzero(rows[4]).tolist()) == {BAR}  # as at the stream start
    assert set(np.flatnonzero(rows[5]).tolist()) == ALL_OFFSETS  # as after a fresh BAR
    assert np.array_equal(rows[8], next_mask(walk([BAR, O(0), P(60), D(1)])))


@settings(max_examples=100, deadline=None)
@given(tokens=st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=60))
def test_masks_along_any_token_list_never_gives_an_empty_row(tokens: list[int]) -> None:
    rows = masks_along(tokens)
    assert rows.shape == (len(tokens), VOCAB_SIZE)
    assert rows.any(axis=1).all()

