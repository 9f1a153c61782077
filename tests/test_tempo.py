"""daemon.tempo: a call's tempo and beat one from its onset times."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.tempo import MIN_ONSETS, TapTempo, TempoTracker, estimate_tempo, merge_chords

EIGHTHS = list(range(0, 32, 2))
DOTTED = [0, 3, 4, 6, 8, 11, 12, 14, 16, 19, 20, 22, 24, 27, 28, 30]  # dotted eighth + sixteenth, then an eighth
SYNCOPATED = [0, 3, 6, 8, 11, 14, 16, 19, 22, 24, 27, 30]  # 3 + 3 + 2 sixteenths: accents between the beats
MIXED = [0, 4, 6, 8, 12, 14, 15, 16, 20, 24, 26, 28, 32, 36, 38, 40, 44, 46, 47, 48, 52, 56, 58, 60]


def played(steps, bpm: float, jitter_s: float = 0.0, seed: int = 0, start: float = 3.0) -> np.ndarray:
    """Onset times of 16th steps at a tempo, each onset moved by Gaussian jitter."""
    rng = np.random.default_rng(seed)
    return start + np.asarray(steps, dtype=float) * 15.0 / bpm + rng.normal(0.0, jitter_s, len(steps))


def error(estimate, bpm: float) -> float:
    assert estimate.readable, estimate.reason
    return abs(estimate.bpm / bpm - 1)


@pytest.mark.parametrize("steps", [EIGHTHS, DOTTED, SYNCOPATED, MIXED], ids=["eighths", "dotted", "syncopated", "mixed"])
@pytest.mark.parametrize("bpm", [84.0, 100.0, 126.0])
def test_exact_rhythms_give_their_tempo_and_the_first_onset_as_beat_one(steps, bpm):
    onsets = played(steps, bpm)
    estimate = estimate_tempo(onsets, 100.0)
    assert error(estimate, bpm) < 0.005
    assert estimate.origin == pytest.approx(onsets[0], abs=0.002)
    assert estimate.grid().position(onsets) == pytest.approx(steps, abs=0.05)


@pytest.mark.parametrize("steps", [EIGHTHS, DOTTED, SYNCOPATED, MIXED], ids=["eighths", "dotted", "syncopated", "mixed"])
@pytest.mark.parametrize("seed", range(4))
def test_jittered_rhythms_stay_within_four_percent(steps, seed):
    """10 ms of scatter. (Known limit: the 3 + 3 + 2 figure, rare in the reference corpus, is read
    right in 99 of 100 calls at 10 ms, 91 at 15 ms and 46 at 25 ms; the other figures here in all
    or all but one: see the README's tempo section.)"""
    bpm = 90.0 + 7 * seed
    estimate = estimate_tempo(played(steps, bpm, jitter_s=0.01, seed=seed), 100.0)
    assert error(estimate, bpm) < 0.04
    # Beat one within a quarter of a 16th of the first onset's true time.
    assert abs(estimate.origin - 3.0) < 0.25 * 15.0 / bpm


@pytest.mark.parametrize("bpm", [66.0, 150.0])
def test_a_phrase_of_mixed_note_values_is_not_read_at_half_or_double_tempo(bpm):
    """66 and 150 are each within an octave of the 100 bpm prior: the rhythm, not the prior,
    must decide that the onsets are eighths and quarters with a few sixteenths."""
    estimate = estimate_tempo(played(MIXED, bpm, jitter_s=0.01, seed=1), 100.0)
    assert error(estimate, bpm) < 0.04


def test_one_note_value_throughout_is_read_nearest_the_prior():
    """Eight quarter notes at 160 are eight eighths at 80: the onsets cannot tell, the prior does."""
    onsets = played(list(range(0, 32, 4)), 160.0)
    assert estimate_tempo(onsets, 90.0).bpm == pytest.approx(80.0, rel=0.01)
    assert estimate_tempo(onsets, 150.0).bpm == pytest.approx(160.0, rel=0.01)


def test_chords_count_as_one_onset_and_leave_the_estimate_alone():
    bpm = 112.0
    melody = played(MIXED, bpm, jitter_s=0.01, seed=2)
    rng = np.random.default_rng(3)
    on_beats = melody[np.isin(MIXED, range(0, 64, 4))]
    chord_notes = np.concatenate([on_beats + rng.uniform(-0.015, 0.015, on_beats.size) for _ in range(3)])
    alone, with_chords = estimate_tempo(melody, 100.0), estimate_tempo(np.concatenate([melody, chord_notes]), 100.0)
    assert with_chords.onsets == alone.onsets == len(MIXED)
    assert error(with_chords, bpm) < 0.02


def test_merge_chords_measures_a_chord_from_its_first_note():
    times, sizes = merge_chords([1.0, 0.0, 0.02, 0.03, 0.05, 0.5])
    assert sizes.tolist() == [3, 1, 1, 1]  # 0.05 is more than 35 ms after the chord's first note
    assert times[0] == pytest.approx(0.05 / 3)


@pytest.mark.parametrize("onsets", [[], [1.0], [1.0, 1.5, 2.0], [1.0, 1.01, 1.02, 1.5, 1.51, 2.0]])
def test_too_short_calls_are_unreadable_with_a_reason(onsets):
    estimate = estimate_tempo(onsets, 100.0)
    assert not estimate.readable
    assert estimate.reason.startswith("too short")
    assert f"{MIN_ONSETS} needed" in estimate.reason


def test_a_trill_is_unreadable():
    """Notes 45 ms apart: faster than sixteenths at any tempo read, and no pulse."""
    estimate = estimate_tempo(np.arange(12) * 0.045, 100.0)
    assert not estimate.readable
    assert estimate.reason.startswith("too irregular")


def test_other_meters_are_read_with_their_own_bar():
    waltz = [0, 4, 6, 7, 8, 12, 16, 18, 20, 24, 28, 30, 31, 32, 36, 40, 42, 44]  # 3/4, bars of 12 sixteenths
    assert error(estimate_tempo(played(waltz, 120.0, jitter_s=0.01), 100.0, steps_per_bar=12), 120.0) < 0.04


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.lists(st.sampled_from([2, 2, 2, 4, 4, 1, 3, 6, 8]), min_size=8, max_size=24),
    bpm=st.floats(80.0, 125.0),
    k=st.floats(0.8, 1.25),
)
def test_scaling_every_onset_time_by_k_scales_the_tempo_by_one_over_k(pattern, bpm, k):
    """The estimate has time scales of its own (the prior's tempo, the timing scatter), so the
    property is stated with them scaled too: a phrase played k times slower by a player k times
    looser, against a setting k times slower, reads k times slower (the same reading, octave
    included). The chord window stays 35 ms: these rhythms have no onsets that close."""
    steps = np.concatenate([[0], np.cumsum(pattern)])
    onsets = played(steps, bpm, jitter_s=0.01, seed=len(pattern), start=0.0)
    original = estimate_tempo(onsets, 100.0, timing_sd=0.025)
    scaled = estimate_tempo(onsets * k, 100.0 / k, timing_sd=0.025 * k)
    assert original.readable and scaled.readable
    assert scaled.bpm * k == pytest.approx(original.bpm, rel=1e-9)


def test_the_tracker_follows_a_drifting_player_and_keeps_its_tempo_over_an_unreadable_call():
    tracker = TempoTracker(100.0)
    for call, bpm in enumerate([118.0, 120.0, 122.0, 124.0]):
        estimate = tracker.update(played(MIXED, bpm, jitter_s=0.01, seed=call))
        assert error(estimate, bpm) < 0.02
        assert tracker.bpm == pytest.approx(estimate.bpm)
    unreadable = tracker.update([0.0, 0.5, 1.0])
    assert not unreadable.readable
    assert tracker.bpm == pytest.approx(estimate.bpm)


def test_the_tracker_reads_an_ambiguous_call_at_the_tempo_it_has():
    """After calls at 150, quarter notes at 150 are read at 150, not as eighths at 75 (which the
    100 bpm setting alone would prefer)."""
    tracker = TempoTracker(100.0)
    assert error(tracker.update(played(MIXED, 150.0, jitter_s=0.01)), 150.0) < 0.02
    quarters = played(list(range(0, 32, 4)), 150.0, jitter_s=0.01, seed=5)
    assert estimate_tempo(quarters, 100.0).bpm == pytest.approx(75.0, rel=0.04)
    assert error(tracker.update(quarters), 150.0) < 0.02


def test_the_tracker_smooths_a_short_noisy_call_but_takes_a_clear_change_at_once():
    tracker = TempoTracker(100.0)
    tracker.update(played(MIXED, 120.0, jitter_s=0.005))
    short = played([0, 2, 4, 6], 123.0, jitter_s=0.02, seed=4)
    reading = estimate_tempo(short, tracker.bpm)
    tracker_before = tracker.bpm
    fused = tracker.update(short)
    assert min(tracker_before, reading.bpm) <= fused.bpm <= max(tracker_before, reading.bpm)
    changed = tracker.update(played(MIXED, 90.0, jitter_s=0.005, seed=6))
    assert error(changed, 90.0) < 0.01


def test_taps_set_the_tempo_by_the_median_interval_and_beat_one_on_the_last_tap():
    taps = TapTempo()
    assert taps.tap(10.0) is None and taps.tap(10.5) is None
    bpm, beat_one = taps.tap(11.0)
    assert bpm == pytest.approx(120.0) and beat_one == pytest.approx(11.0)
    bpm, beat_one = taps.tap(11.56)  # one late tap moves neither
    assert bpm == pytest.approx(120.0) and beat_one == pytest.approx(11.5)
    assert taps.tap(14.0) is None  # after a long pause the count starts again
