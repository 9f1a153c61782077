"""Each figure of an answer on hand-made calls and answers whose values are known."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.codec import Note
from daemon.keys import Key
from daemon.music_figures import (
    clash_count,
    clash_rate,
    copy_rate,
    density_ratio,
    duration_distance,
    figures,
    mean_pitch_distance,
    onset_cosine,
    polyphony,
    silent_beats,
)

# Two bars of C major: a rising line, then a cadence with a held tonic.
CALL = [Note(0, 60, 2), Note(2, 62, 2), Note(4, 64, 4), Note(8, 65, 2), Note(10, 67, 2), Note(12, 69, 4),
        Note(16, 71, 4), Note(20, 72, 4), Note(24, 67, 4), Note(28, 60, 4)]
BAR = 16


def shifted(notes, semitones=0, steps=0):
    return [n._replace(pitch=n.pitch + semitones, start=n.start + steps) for n in notes]


def test_an_answer_equal_to_the_call_copies_it_and_matches_every_profile():
    f = figures(CALL, CALL, BAR, 32, 32)
    assert f.copy == 1 and f.density_ratio == 1 and f.duration_distance == 0 and f.pitch_distance == 0
    assert f.pc_cos == pytest.approx(1) and f.onset_cos == pytest.approx(1)
    assert f.in_scale == 1 and f.silent_beats == 0 and f.clash == 0 and f.polyphony == 1


def test_the_tritone_transposition_leaves_the_key():
    f = figures(CALL, shifted(CALL, 6), BAR, 32, 32, key=Key(0, False))
    # F# major against C major: only B (from F) and F (from B) stay in the scale.
    assert f.in_scale == pytest.approx(2 / 10)
    assert f.copy == 0 and f.pc_cos < 0.3 and f.onset_cos == pytest.approx(1) and f.pitch_distance == 6


def test_the_call_finds_its_own_key_when_none_is_given():
    assert figures(CALL, shifted(CALL, 6), BAR, 32, 32).in_scale == pytest.approx(2 / 10)


def test_an_empty_answer_is_all_silence():
    f = figures(CALL, [], BAR, 32, 32)
    assert f.silent_beats == 1 and f.density_ratio == 0 and f.pc_cos == 0 and f.onset_cos == 0
    for undefined in (f.in_scale, f.pitch_distance, f.duration_distance, f.copy, f.polyphony, f.clash):
        assert math.isnan(undefined)


def test_a_known_clash_count():
    notes = [
        Note(0, 60, 4), Note(2, 61, 1),  # C# struck while C sounds: the C# clashes
        Note(8, 64, 2), Note(8, 65, 2),  # E and F struck together: both
        Note(12, 66, 2), Note(14, 67, 2),  # G after F# has ended: no clash
        Note(16, 60, 4), Note(16, 73, 4),  # a minor ninth is not a semitone
    ]
    assert clash_count(notes) == 3
    assert clash_rate(notes) == 3 / 8


def test_silent_beats_count_beats_where_nothing_sounds():
    assert silent_beats([Note(0, 60, 4), Note(16, 60, 1)], 32) == 6 / 8
    assert silent_beats([Note(0, 60, 32)], 32) == 0
    assert silent_beats([Note(3, 60, 2)], 32) == 6 / 8  # held across a beat line: both beats sound


def test_polyphony_is_the_mean_count_where_anything_sounds():
    assert polyphony([Note(0, 60, 4), Note(2, 64, 4)], 32) == pytest.approx(8 / 6)


def test_density_ratio_is_per_step():
    assert density_ratio(CALL[:5], 16, CALL, 32) == 1.0
    assert density_ratio(CALL, 64, CALL, 32) == 0.5


def test_copy_rate_wraps_an_answer_longer_than_the_call():
    assert copy_rate(CALL + shifted(CALL, steps=32), CALL, 32) == 1
    assert copy_rate(shifted(CALL, steps=1), CALL, 32) == 0
    assert copy_rate([CALL[0], Note(0, 61, 2)], CALL, 32) == 0.5


def test_onset_cosine_of_disjoint_positions_is_zero():
    assert onset_cosine([Note(1, 60, 1)], [Note(0, 60, 1)], BAR) == 0


def test_duration_distance_of_disjoint_durations_is_one():
    assert duration_distance([Note(0, 60, 3)], [Note(0, 60, 2), Note(4, 60, 4)]) == 1


@given(st.lists(st.builds(Note, st.integers(0, 31), st.integers(21, 108), st.integers(1, 8)), min_size=1, max_size=20),
       st.integers(-12, 12))
def test_transposition_moves_the_mean_pitch_by_its_size(notes, semitones):
    assert mean_pitch_distance(shifted(notes, semitones), notes) == pytest.approx(abs(semitones))
