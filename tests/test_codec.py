"""The paper's 153-token encoding: exact ids, splits, ordering, normalisation, and round trips."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.codec import (
    BAR,
    VOCAB_SIZE,
    Note,
    bar_times,
    decode,
    duration_token,
    encode,
    is_bar,
    is_duration,
    is_offset,
    is_pitch,
    normalise,
    offset_token,
    pitch_token,
    token_name,
    token_names,
    token_value,
)
from daemon.grammar import accepts

PROPERTY = settings(max_examples=150, deadline=None)


def O(offset: int) -> int:  # noqa: N802 - short names keep the expected streams readable
    return offset_token(offset)


def P(pitch: int) -> int:  # noqa: N802
    return pitch_token(pitch)


def D(duration: int) -> int:  # noqa: N802
    return duration_token(duration)


def triples(notes: list[Note]) -> list[tuple[int, int, int]]:
    return [(n.start, n.pitch, n.duration) for n in notes]


# --- the vocabulary -------------------------------------------------------------------------


def test_vocabulary_has_the_papers_153_ids() -> None:
    assert VOCAB_SIZE == 153
    assert BAR == 0
    assert [offset_token(o) for o in (0, 31)] == [1, 32]
    assert [pitch_token(p) for p in (21, 60, 108)] == [33, 72, 120]
    assert [duration_token(d) for d in (1, 32)] == [121, 152]


def test_every_token_has_exactly_one_kind_and_its_value_round_trips() -> None:
    rebuilt = {"bar": lambda v: BAR, "offset": offset_token, "pitch": pitch_token, "duration": duration_token}
    counts = {"bar": 0, "offset": 0, "pitch": 0, "duration": 0}
    for token in range(VOCAB_SIZE):
        kinds = [is_bar(token), is_offset(token), is_pitch(token), is_duration(token)]
        assert sum(kinds) == 1, token
        kind = ("bar", "offset", "pitch", "duration")[kinds.index(True)]
        counts[kind] += 1
        assert rebuilt[kind](token_value(token)) == token
    assert counts == {"bar": 1, "offset": 32, "pitch": 88, "duration": 32}


def test_token_names_are_readable_and_unique() -> None:
    assert token_names([BAR, O(0), O(31), P(21), P(60), P(108), D(1), D(32)]) == [
        "Bar",
        "Offset_0",
        "Offset_31",
        "Pitch_21",
        "Pitch_60",
        "Pitch_108",
        "Duration_1",
        "Duration_32",
    ]
    assert len({token_name(t) for t in range(VOCAB_SIZE)}) == VOCAB_SIZE


@pytest.mark.parametrize("token", [-1, VOCAB_SIZE, 1000])
def test_tokens_outside_the_vocabulary_are_refused(token: int) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_value(token)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode([BAR, token])


# --- hand-picked encodings --------------------------------------------------------------------


def test_a_single_note() -> None:
    tokens = encode([Note(0, 60, 4)])
    assert tokens == [0, 1, 72, 124]
    assert token_names(tokens) == ["Bar", "Offset_0", "Pitch_60", "Duration_4"]


def test_notes_are_offset_from_the_previous_bar() -> None:
    notes = [Note(0, 60, 4), Note(4, 62, 4), Note(16, 64, 8), Note(20, 65, 2)]
    tokens = encode(notes, bar_starts=[0, 16])
    assert tokens == [BAR, O(0), P(60), D(4), O(4), P(62), D(4), O(16), BAR, O(0), P(64), D(8), O(4), P(65), D(2)]
    assert bar_times(tokens) == [0, 16]


def test_a_bar_of_40_steps_is_split_into_31_and_9() -> None:
    tokens = encode([Note(0, 60, 4), Note(40, 62, 4)], bar_starts=[40])
    assert tokens == [BAR, O(0), P(60), D(4), O(31), BAR, O(9), BAR, O(0), P(62), D(4)]
    assert token_names(tokens[4:8]) == ["Offset_31", "Bar", "Offset_9", "Bar"]
    assert bar_times(tokens) == [0, 31, 40]


def test_a_note_of_36_steps_is_split_into_32_and_4() -> None:
    tokens = encode([Note(0, 60, 36)], bar_starts=[16, 32])
    assert tokens == [BAR, O(0), P(60), D(32), O(16), BAR, O(16), BAR, O(0), P(60), D(4)]
    assert token_names([tokens[3], tokens[-1]]) == ["Duration_32", "Duration_4"]
    assert triples(decode(tokens)) == [(0, 60, 32), (32, 60, 4)]


def test_a_bar_comes_before_a_note_at_the_same_time_and_equal_times_go_by_pitch() -> None:
    notes = [Note(16, 67, 2), Note(16, 60, 2), Note(0, 64, 4), Note(0, 52, 4)]
    tokens = encode(notes, bar_starts=[16])
    assert tokens == [
        BAR, O(0), P(52), D(4), O(0), P(64), D(4),
        O(16), BAR, O(0), P(60), D(2), O(0), P(67), D(2),
    ]  # fmt: skip


def test_a_note_31_steps_after_the_last_bar_gets_a_split_bar_first() -> None:
    # Note offsets stay within 0..30, so a bar can always still follow (see codec docstring).
    tokens = encode([Note(31, 60, 1)])
    assert tokens == [BAR, O(31), BAR, O(0), P(60), D(1)]
    assert triples(decode(tokens)) == [(31, 60, 1)]


def test_bars_at_or_before_step_0_add_nothing() -> None:
    assert encode([Note(2, 60, 1)], bar_starts=[-16, 0, 0]) == [BAR, O(2), P(60), D(1)]


def test_decode_skips_tokens_out_of_place() -> None:
    assert decode([P(60), D(4)]) == []
    assert triples(decode([BAR, O(3), D(4), O(5), P(60), P(62), D(2)])) == [(5, 62, 2)]


def test_decode_uses_the_given_velocity() -> None:
    assert decode(encode([Note(0, 60, 4, 100)]), velocity=90) == [Note(0, 60, 4, 90)]


# --- normalisation ----------------------------------------------------------------------------


def test_same_start_and_pitch_are_merged_keeping_the_longest() -> None:
    kept, dropped = normalise([Note(0, 60, 2), Note(0, 60, 8), Note(0, 60, 3), Note(0, 61, 1)])
    assert triples(kept) == [(0, 60, 8), (0, 61, 1)]
    assert dropped == {"merged": 2}


def test_a_split_piece_merges_with_a_note_at_its_start() -> None:
    kept, dropped = normalise([Note(0, 60, 36), Note(32, 60, 8)])
    assert triples(kept) == [(0, 60, 32), (32, 60, 8)]
    assert dropped == {"merged": 1}


def test_notes_outside_the_piano_are_dropped_and_counted() -> None:
    kept, dropped = normalise([Note(0, 20, 1), Note(0, 21, 1), Note(0, 108, 1), Note(0, 109, 1), Note(0, 127, 1)])
    assert triples(kept) == [(0, 21, 1), (0, 108, 1)]
    assert dropped == {"out_of_range": 3}


def test_notes_rounding_to_no_duration_are_dropped_and_counted() -> None:
    kept, dropped = normalise([Note(0, 60, 0), Note(4, 60, 1)])
    assert triples(kept) == [(4, 60, 1)]
    assert dropped == {"too_short": 1}


def test_a_note_before_step_0_is_an_error() -> None:
    with pytest.raises(ValueError, match="before step 0"):
        normalise([Note(-1, 60, 4)])


# --- properties -------------------------------------------------------------------------------

notes_strategy = st.lists(
    st.builds(
        Note,
        start=st.integers(0, 300),
        pitch=st.integers(15, 115),
        duration=st.integers(0, 80),
        velocity=st.integers(1, 127),
    ),
    max_size=40,
)
bars_strategy = st.lists(st.integers(0, 320), max_size=20)


@PROPERTY
@given(notes=notes_strategy, bars=bars_strategy)
def test_decode_of_encode_is_the_normalised_notes(notes: list[Note], bars: list[int]) -> None:
    kept, _ = normalise(notes)
    assert triples(decode(encode(notes, bars))) == triples(kept)


@PROPERTY
@given(notes=notes_strategy, bars=bars_strategy)
def test_every_encoding_and_each_of_its_prefixes_is_accepted(notes: list[Note], bars: list[int]) -> None:
    tokens = encode(notes, bars)
    assert all(0 <= t < VOCAB_SIZE for t in tokens)
    for end in range(len(tokens) + 1):
        assert accepts(tokens[:end]), token_names(tokens[:end])


@PROPERTY
@given(notes=notes_strategy, bars=bars_strategy)
def test_bar_lines_are_kept_and_only_split_bars_are_added(notes: list[Note], bars: list[int]) -> None:
    tokens = encode(notes, bars)
    times = bar_times(tokens)
    kept, _ = normalise(notes)
    last_start = kept[-1].start if kept else 0
    wanted = {b for b in bars if 0 < b <= last_start}
    assert times[0] == 0
    assert wanted <= set(times)
    for previous, time in zip(times, times[1:]):
        assert 1 <= time - previous <= 31
        assert time in wanted or time - previous == 31


@PROPERTY
@given(notes=notes_strategy, bars=bars_strategy, seed=st.integers(0, 2**32 - 1))
def test_the_encoding_does_not_depend_on_input_order(notes: list[Note], bars: list[int], seed: int) -> None:
    shuffled_notes, shuffled_bars = list(notes), list(bars)
    random.Random(seed).shuffle(shuffled_notes)
    random.Random(seed).shuffle(shuffled_bars)
    assert encode(shuffled_notes, shuffled_bars) == encode(notes, bars)
