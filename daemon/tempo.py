"""Tempo and beat one read from a call's onset times alone.

The estimate is the most probable 16th-note grid under a small generative model of a played
phrase: from each onset the next one follows a number of 16ths later with the probability that
rhythm has in the reference training music at that place in the bar (a Markov chain over bar
positions), an onset is a chord or a single note with the probability its place in the bar gives
(chords mark strong beats), every played onset strays from its slot by Gaussian timing noise of
the call's own scale (the least-squares scatter of the reading, at least `TIMING_SD_S`: a precise
player's rhythm is taken as played, a loose one's is judged more by the rhythm model), and the
tempo has a log-normal prior around the tempo in use. The rhythm model settles most of what
the prior alone cannot: a phrase of eighths, dotted figures and a few sixteenths is not read at
half or double its tempo, because the corpus seldom puts such figures a level up or down. A call
of one note value throughout (all quarters, all sixteenths) stays ambiguous: then the prior
decides.

Search: tempi on a log grid times a few phases of the 16th grid choose each onset's slot; every
such reading's tempo and timing come from a least-squares line through its slots, all scored at
once with numpy. Chords count as one onset (notes
within `CHORD_S` of the first of them). Beat one is the first onset (its fitted grid time):
detecting pickups from the rhythm model was measured to put beat one wrong more often than right
(bench/tempo_follow.py, README).

`TempoTracker` carries the tempo across calls: the tempo in use is the next call's prior centre,
and each readable call's estimate is fused with it (a one-dimensional Kalman filter on log tempo:
a player's drift is followed, a short noisy call is smoothed, a clear change of tempo is taken at
once); a call that cannot be read keeps it.

What is left wrong is mostly the octave, and it is the rhythm model's choice, not the prior's: on
the eighth grid music looks much the same a metrical level up or down. A wider prior, a heavier or
second-order rhythm model, pitch by place in the bar (lowest notes, chord size and span, bass
changes) and a log-linear model of all of them with fitted weights were measured and gained at
most 1-2 points, none at 25 ms of jitter (README, issue 13).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from daemon.clock import TempoGrid

CHORD_S = 0.035  # onsets closer than this to the first of them are one chord
MIN_ONSETS = 4  # fewer onsets (chords counted once) tell nothing about a tempo
# Candidate tempi, as multiples of the tempo in use (so that the search, like the prior, scales with
# it): 2% apart, from 0.4 to 2.4 times it; the candidates only choose each onset's slot, the tempo
# itself is fitted to those slots.
CANDIDATE_RATIOS = np.geomspace(0.4, 2.4, 91)
PHASES = 6  # phases of the 16th grid tried per tempo
TIMING_SD_S = 0.01  # the least onset scatter around the grid assumed (a player's own is measured by the fit)
_STEPS_PER_SECOND_PER_BPM = (CANDIDATE_RATIOS / 15.0)[:, None, None]  # (tempi, 1, 1)
_PHASE_OFFSETS = (np.arange(PHASES) / PHASES)[None, :, None]  # (1, phases, 1): the first onset's place in its slot
PRIOR_WIDTH = 0.2  # standard deviation of log tempo around the tempo in use
# The rhythm model: how many 16ths from each onset to the next, by the onset's 16th in a 4/4 bar,
# counted over the reference training files (bench/tempo_follow.py --profile writes it).
TRANSITIONS_FILE = Path(__file__).with_name("data") / "onset_transitions.json"
RHYTHM_WEIGHT = 0.4  # the rhythm model treats onsets as independent, which overstates its evidence
MAX_GAP = 32  # gaps of two bars or more are one class
SHARED_SLOT_LOGP = math.log(0.3)  # another onset in an occupied slot: a chord played apart, or too coarse a grid
# A reading whose tempo the onsets pin down no better than this (standard error of log tempo) is
# not a reading: a trill or a flurry of grace notes, not a call with a pulse.
MAX_TEMPO_UNCERTAINTY = 0.04
# Tracking: expected drift between calls (log tempo s.d.), and the jump beyond which the player
# has simply changed tempo and the old one is forgotten.
DRIFT_WIDTH = 0.03
CHANGE_RATIO = 0.08


@dataclass(frozen=True)
class TempoEstimate:
    """A call's tempo and grid, or why it could not be read (`reason`, with bpm None)."""

    bpm: float | None
    origin: float = 0.0  # grid time of the first onset: beat one of the call's first bar
    onsets: int = 0  # onsets after chords were merged
    sd_log_bpm: float = 0.0  # the estimate's uncertainty (standard error of log tempo)
    reason: str = ""

    @property
    def readable(self) -> bool:
        return self.bpm is not None

    @property
    def step(self) -> float:
        return 15.0 / self.bpm

    def grid(self) -> TempoGrid:
        """The 16th grid whose zero is beat one of the call's first bar (the first onset)."""
        return TempoGrid(self.origin, self.step)


def merge_chords(onsets: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted onset times with each chord (notes within `CHORD_S` of its first) as its mean time,
    and the number of notes in each."""
    times = np.sort(np.asarray(onsets, dtype=float))
    if times.size == 0:
        return times, np.zeros(0, dtype=np.int64)
    starts = [0]
    first = times[0]
    for i in range(1, times.size):  # a chord is measured from its first note, so no vectorised diff
        if times[i] - first > CHORD_S:
            starts.append(i)
            first = times[i]
    sizes = np.diff(np.append(starts, times.size))
    return np.add.reduceat(times, starts) / sizes, sizes


def _representative(steps_per_bar: int) -> np.ndarray:
    """For each 16th of a bar, the 16th of a 4/4 bar at the same metrical level (bar line, beat,
    eighth, sixteenth), so the 4/4 rhythm model serves every n/4 meter."""
    position = np.arange(steps_per_bar)
    return np.where(position == 0, 0, np.where(position % 4 == 0, 4, np.where(position % 2 == 0, 2, 1)))


class _RhythmModel:
    """The rhythm model's log-probabilities for one meter, as flat tables indexed in `score`."""

    def __init__(self, steps_per_bar: int) -> None:
        counts = json.loads(TRANSITIONS_FILE.read_text())
        gaps = _log_frequencies(counts["gap_counts"], steps_per_bar)
        chords = _log_frequencies(counts["single_chord_counts"], steps_per_bar)
        self.bar = steps_per_bar
        # gap 0 (two onsets in one slot) first, then gaps 1..MAX_GAP (the last: that or longer)
        shared = np.full((steps_per_bar, 1), SHARED_SLOT_LOGP)
        self.log_gap = np.concatenate([shared, RHYTHM_WEIGHT * gaps], axis=1).ravel()
        self.log_chord = RHYTHM_WEIGHT * chords.ravel()

    def score(self, k: np.ndarray, chord: np.ndarray) -> np.ndarray:
        """Sum of log P(gap to the next onset | position) and log P(chord or single note | position),
        tempered by RHYTHM_WEIGHT, for slot indices `k` (last axis, nondecreasing, the first onset on
        a bar line) of onsets that are chords where `chord` is 1."""
        gap = np.minimum(k[..., 1:] - k[..., :-1], MAX_GAP)
        position = k % self.bar
        gap = gap + position[..., :-1] * (MAX_GAP + 1)
        position *= 2
        position += chord
        return self.log_gap[gap].sum(axis=-1) + self.log_chord[position].sum(axis=-1)


def _log_frequencies(counts: list[list[int]], steps_per_bar: int) -> np.ndarray:
    """Rows of counts (one per 16th of a 4/4 bar) as log frequencies, one row per 16th of this meter."""
    table = np.asarray(counts, dtype=float) + 0.5
    log_p = np.log(table / table.sum(axis=1, keepdims=True))
    return log_p if steps_per_bar == table.shape[0] else log_p[_representative(steps_per_bar)]


_MODELS: dict[int, _RhythmModel] = {}


def _rhythm_model(steps_per_bar: int) -> _RhythmModel:
    model = _MODELS.get(steps_per_bar)
    if model is None:
        model = _MODELS[steps_per_bar] = _RhythmModel(steps_per_bar)
    return model


def estimate_tempo(
    onsets: Sequence[float] | np.ndarray, prior_bpm: float, steps_per_bar: int = 16, prior_width: float = PRIOR_WIDTH,
    timing_sd: float = TIMING_SD_S,
) -> TempoEstimate:
    """The tempo (quarter notes per minute) and beat one of a call from its note-on times (s),
    in any order, chord notes included; `steps_per_bar` is the meter's bar in 16ths, `timing_sd`
    the player's scatter around the grid (s)."""
    times, sizes = merge_chords(onsets)
    chord = (sizes > 1).astype(np.int32)
    n = int(times.size)
    if n < MIN_ONSETS:
        return TempoEstimate(None, onsets=n, reason=f"too short: {n} onsets (chords count once), {MIN_ONSETS} needed")
    model = _rhythm_model(steps_per_bar)
    # Each (tempo, phase) hypothesis puts every onset in a slot (the first onset in slot 0); its
    # timing is judged after fitting the grid's line to those slots by least squares, so a candidate
    # tempo a little off the true one costs nothing: the 2% grid of candidates only picks the slots.
    elapsed = times - times[0]
    k = np.floor(elapsed * (_STEPS_PER_SECOND_PER_BPM * prior_bpm) + _PHASE_OFFSETS)
    sum_k = k.sum(axis=-1)
    spread_k = np.einsum("tpn,tpn->tp", k, k) - sum_k**2 / n
    covariance = k @ elapsed - sum_k * (elapsed.sum() / n)
    spread_t = float(np.sum((elapsed - elapsed.mean()) ** 2))
    spread_k = np.maximum(spread_k, 1e-9)  # all onsets in one slot: no line, and a tiny fitted tempo
    squared_error = spread_t - covariance**2 / spread_k
    timing = -0.5 * n * np.log(squared_error / n + timing_sd**2)
    fitted_bpm = 15.0 * spread_k / np.maximum(covariance, 1e-9)
    prior = -0.5 * (np.log(fitted_bpm / prior_bpm) / prior_width) ** 2
    k = k.astype(np.int32)
    score = timing + model.score(k, chord) + prior
    best = np.unravel_index(np.argmax(score), score.shape)
    slots = k[best]
    if best[0] in (0, CANDIDATE_RATIOS.size - 1):
        low, high = CANDIDATE_RATIOS[[0, -1]] * prior_bpm
        reason = f"too irregular: no tempo between {low:.0f} and {high:.0f} bpm fits the onsets"
        return TempoEstimate(None, onsets=n, reason=reason)
    step_s, origin, sd = _fit_line(slots, times, timing_sd)
    if sd > MAX_TEMPO_UNCERTAINTY:
        return TempoEstimate(None, onsets=n, sd_log_bpm=sd,
                             reason=f"too irregular: the onsets leave the tempo uncertain by ±{sd:.0%}")
    return TempoEstimate(15.0 / step_s, origin, n, sd)


def _fit_line(slots: np.ndarray, times: np.ndarray, timing_sd: float) -> tuple[float, float, float]:
    """Least squares times = origin + slots * step: (step, origin, standard error of log step)."""
    k = slots.astype(float)
    mean_k, mean_t = k.mean(), times.mean()
    spread = float(np.sum((k - mean_k) ** 2))
    step = float(np.sum((k - mean_k) * (times - mean_t)) / spread)
    origin = float(mean_t - mean_k * step)
    residual = times - origin - k * step
    sd = math.sqrt(max(float(np.sum(residual**2)) / max(k.size - 2, 1), (0.2 * timing_sd) ** 2) / spread) / step
    return step, origin, sd


class TempoTracker:
    """The tempo across calls: each readable call refines it, an unreadable one keeps it."""

    def __init__(self, bpm: float, steps_per_bar: int = 16, prior_width: float = PRIOR_WIDTH) -> None:
        self.bpm = bpm
        self.steps_per_bar = steps_per_bar
        self.prior_width = prior_width
        self._variance = prior_width**2  # of log tempo; large until a call has been read

    def reset(self, bpm: float) -> None:
        self.bpm = bpm
        self._variance = self.prior_width**2

    def follow(self, bpm: float) -> None:
        """The tempo a player was followed to while playing along: the next call's prior centre."""
        self.bpm = bpm

    def update(self, onsets: Sequence[float] | np.ndarray) -> TempoEstimate:
        """The call's estimate, its tempo fused with the tempo so far (the tracker takes it)."""
        estimate = estimate_tempo(onsets, self.bpm, self.steps_per_bar, self.prior_width)
        if not estimate.readable:
            return estimate
        measured = math.log(estimate.bpm)
        current = math.log(self.bpm)
        variance = self._variance + DRIFT_WIDTH**2
        noise = estimate.sd_log_bpm**2
        if abs(measured - current) > math.log1p(CHANGE_RATIO):
            fused, self._variance = measured, noise  # a new tempo, not a drift
        else:
            gain = variance / (variance + noise)
            fused, self._variance = current + gain * (measured - current), (1 - gain) * variance
        self.bpm = math.exp(fused)
        return _at_bpm(estimate, self.bpm, onsets)


def _at_bpm(estimate: TempoEstimate, bpm: float, onsets: Sequence[float] | np.ndarray) -> TempoEstimate:
    """The estimate moved to another tempo, its grid re-fitted to the same onsets."""
    if math.isclose(bpm, estimate.bpm, rel_tol=1e-9):
        return estimate
    times, _ = merge_chords(onsets)
    step = 15.0 / bpm
    old = estimate.grid()
    slots = np.round(old.position(times))
    origin = float(np.mean(times - slots * step))
    return replace(estimate, bpm=bpm, origin=origin)


# Following a player while playing along (`GridFollower`): how far the length of a 16th may
# wander per 16th (relative), how far an onset strays from its 16th (s), and the innovation,
# in standard deviations, past which an onset is taken for a misread rhythm, not for the pulse.
FOLLOW_DRIFT = 0.005
FOLLOW_TIMING_S = 0.03
FOLLOW_GATE = 2.0


class GridFollower:
    """The grid of a player who drifts, followed onset by onset: a Kalman filter on the time of
    the latest onset's 16th and the length of a 16th. Each onset is first placed on a 16th: the
    nearest one or a neighbour, whichever the timing (as the grid predicts it) and the rhythm
    model (how often that gap follows the last onset's place in the bar) make likelier, so that
    a sixteenth played a little late is not taken for a pulse slowing down. One whose innovation
    is past `FOLLOW_GATE` standard deviations even so is not taken. A fixed grid is perfect for a
    steady player; this one trades a few milliseconds of that (jitter moves it) for staying with
    one who slows down or speeds up (bench/follow_grid.py)."""

    def __init__(self, grid: TempoGrid, t: float, steps_per_bar: int = 16, bar_line: float = 0.0) -> None:
        """Following `grid` from time t on; `bar_line`: a grid position where a bar begins."""
        self.position = round(grid.position(t))  # the grid position of the latest onset
        self.state = np.array([grid.time_at(self.position), grid.step])  # (its time, the 16th's length)
        self.covariance = np.diag([FOLLOW_TIMING_S**2, (0.02 * grid.step) ** 2])
        self.model = _rhythm_model(steps_per_bar)
        self.bar_line = round(bar_line)
        self.placed = False  # no onset placed yet: the first one is placed by timing alone

    @property
    def grid(self) -> TempoGrid:
        time, step = self.state
        return TempoGrid(float(time - self.position * step), float(step))

    def onset(self, t: float) -> bool:
        """An onset at time t; True if it moved the grid."""
        nearest = round(self.grid.position(t))
        best = None
        for position in (nearest - 1, nearest, nearest + 1):
            if self.placed and position <= self.position:
                continue
            steps = position - self.position
            move = np.array([[1.0, steps], [0.0, 1.0]])
            state = move @ self.state
            covariance = move @ self.covariance @ move.T
            covariance[1, 1] += (FOLLOW_DRIFT * self.state[1]) ** 2 * abs(steps)
            spread = covariance[0, 0] + FOLLOW_TIMING_S**2
            innovation = t - state[0]
            score = -0.5 * innovation**2 / spread
            if self.placed:
                place = (self.position - self.bar_line) % self.model.bar
                score += self.model.log_gap[place * (MAX_GAP + 1) + min(steps, MAX_GAP)]
            if best is None or score > best[0]:
                best = (score, position, state, covariance, spread, innovation)
        if best is None:
            return False
        _, position, state, covariance, spread, innovation = best
        if abs(innovation) > FOLLOW_GATE * math.sqrt(spread):
            return False
        gain = covariance[:, 0] / spread
        self.state = state + gain * innovation
        self.covariance = covariance - np.outer(gain, covariance[0, :])
        self.position, self.placed = position, True
        return True


TAP_GAP_S = 2.0  # a pause longer than this between taps starts a new count
MIN_TAPS = 3


class TapTempo:
    """Tap tempo: three or more taps, each within TAP_GAP_S of the last, set the tempo (the median
    interval) and beat one (on the last tap, where the taps' median phase puts it: one tap a
    little late or early moves neither)."""

    def __init__(self) -> None:
        self._taps: list[float] = []

    def tap(self, t: float) -> tuple[float, float] | None:
        """A tap at time t: (bpm, time of beat one) once there are enough taps, else None."""
        if self._taps and t - self._taps[-1] > TAP_GAP_S:
            self._taps.clear()
        self._taps.append(t)
        if len(self._taps) < MIN_TAPS:
            return None
        taps = np.asarray(self._taps)
        interval = float(np.median(np.diff(taps)))
        beats = np.arange(taps.size)
        beat_one = float(np.median(taps - beats * interval)) + beats[-1] * interval
        return 60.0 / interval, beat_one
