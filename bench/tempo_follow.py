"""How well a call's tempo is read from its onsets: daemon.tempo against pretty_midi and a fixed tempo.

Phrases of 2 and 4 bars (4/4) from several places in each reference test file are played at tempi
drawn uniformly between 60 and 180 bpm with human timing: Gaussian onset jitter (10 and 25 ms, and 0 for reference,
each note on its own, chords included), velocities moved by up to ±15 and note lengths shortened
at random. Each call's tempo is then estimated from its note-on times alone by
- follow: daemon.tempo.estimate_tempo with the prior at the default 100 bpm (a call it cannot read
  keeps 100, as the daemon would);
- pretty_midi: PrettyMIDI.estimate_tempo() on the same notes (the baseline);
- fixed: 100 bpm whatever was played (the control: today's daemon without a clock);
- follow_tracked: runs of 4 consecutive 2-bar calls from one place of a file, one player's tempo
  drawn per run and drifting by 2% (s.d.) from call to call, read by a daemon.tempo.TempoTracker
  that starts at 100 bpm (each call's prior is the tempo read so far), as the daemon reads them,
  and (follow_runs_call_by_call) the same calls each read alone with the prior at 100.
One JSON line per (estimator, jitter): calls, bpm_error_p50_pct, bpm_error_p90_pct,
octave_error_rate (half or double the tempo, within 8%), within_4pct_rate, and for daemon.tempo
unreadable_rate,
beat_one_rate (within 4% and beat one within half a 16th of the phrase's first bar line) and
cost_ms (mean CPU time of one estimate: process time, so that other work on a shared machine does not count).

    python bench/tempo_follow.py [--split test|train] [--places 6] [--draws 3] [--seed 0]
    python bench/tempo_follow.py --profile   # writes the rhythm model daemon.tempo uses, from the training files

Needs the `bench` extra (pretty_midi) and the `training` extra (muspy) to read the files.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.tempo import MAX_GAP, TRANSITIONS_FILE, TempoEstimate, TempoTracker, estimate_tempo
from training.midi_loading import load_folder

REFERENCE = Path("/work/shared/data/reference")
DEFAULT_BPM = 100.0
BAR = 16
JITTERS_MS = (0, 10, 25)  # 0: what the rhythm alone leaves ambiguous
OCTAVE_TOLERANCE = 0.08
SESSION_CALLS = 4  # calls in a tracked run
SESSION_DRIFT = 0.02  # s.d. of the tempo's change from one call of a run to the next


@dataclass
class Phrase:
    steps: np.ndarray  # note starts, 16ths from the phrase's first bar line
    durations: np.ndarray
    pitches: np.ndarray
    velocities: np.ndarray


def phrases(folder: Path, places: int, session: int = 0) -> list[list[Phrase]]:
    """Runs of calls from each file, at `places` evenly spread bar lines: 2- and 4-bar windows of
    4/4 bars one to a run (session 0), or `session` consecutive 2-bar windows a run."""
    runs = []
    for item in load_folder(folder, report=None).loaded:
        bars = item.bar_starts
        for length, count in ((2, session),) if session else ((2, 1), (4, 1)):
            span = length * count
            usable = [i for i in range(len(bars) - span) if all(bars[i + j + 1] - bars[i + j] == BAR for j in range(span))]
            for i in np.unique(np.linspace(0, len(usable) - 1, places).astype(int)) if usable else []:
                run = [_window(item.notes, bars[usable[i]] + c * length * BAR, length) for c in range(count)]
                if all(run):
                    runs.append(run)
    return runs


def _window(notes, first: int, bars: int) -> Phrase | None:
    chosen = [n for n in notes if first <= n.start < first + bars * BAR]
    if not chosen:
        return None
    return Phrase(np.array([n.start - first for n in chosen]), np.array([n.duration for n in chosen]),
                  np.array([n.pitch for n in chosen]), np.array([n.velocity for n in chosen]))


@dataclass
class Performance:
    bpm: float
    bar_line: float  # time of the phrase's first bar line (where its step 0 falls without jitter)
    onsets: np.ndarray
    offsets: np.ndarray
    pitches: np.ndarray
    velocities: np.ndarray


def perform(phrase: Phrase, bpm: float, jitter_s: float, rng: np.random.Generator) -> Performance:
    step = 15.0 / bpm
    onsets = phrase.steps * step + rng.normal(0.0, jitter_s, phrase.steps.size)
    lengths = phrase.durations * step * rng.uniform(0.3, 1.0, phrase.steps.size)
    velocities = np.clip(phrase.velocities + rng.integers(-15, 16, phrase.steps.size), 1, 127)
    order = np.argsort(onsets, kind="stable")
    shift = 1.0 - onsets.min()  # the call starts a second after time zero
    onsets = onsets[order] + shift
    return Performance(bpm, shift, onsets, onsets + np.maximum(lengths[order], 0.02), phrase.pitches[order],
                       velocities[order])


def pretty_midi_tempo(performance: Performance) -> float:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(int(v), int(p), float(a), float(b)) for a, b, p, v in
                   zip(performance.onsets, performance.offsets, performance.pitches, performance.velocities)]
    midi.instruments.append(piano)
    start = time.process_time()
    try:
        bpm = float(midi.estimate_tempo())
    except ValueError:  # fewer than two notes: the daemon would keep its tempo
        bpm = DEFAULT_BPM
    pretty_midi_tempo.cost_s += time.process_time() - start
    return bpm


pretty_midi_tempo.cost_s = 0.0


def run(split: str, places: int, draws: int, seed: int) -> None:
    calls = [run[0] for run in phrases(REFERENCE / split, places)]
    sessions = phrases(REFERENCE / split, places, SESSION_CALLS)
    for jitter_ms in JITTERS_MS:
        rng = np.random.default_rng(seed + jitter_ms)
        performances = [perform(p, rng.uniform(60, 180), jitter_ms / 1000, rng) for p in calls for _ in range(draws)]
        true_bpm = np.array([p.bpm for p in performances])

        start = time.process_time()
        estimates = [estimate_tempo(p.onsets, DEFAULT_BPM, BAR) for p in performances]
        cost = (time.process_time() - start) / len(performances)
        print(json.dumps(summary("follow", jitter_ms, performances, estimates, {"cost_ms": round(cost * 1000, 3)})))

        pretty_midi_tempo.cost_s = 0.0
        baseline = np.array([pretty_midi_tempo(p) for p in performances])
        print(json.dumps(summary("pretty_midi", jitter_ms, performances, baseline,
                                 {"cost_ms": round(pretty_midi_tempo.cost_s / len(performances) * 1000, 3)})))
        print(json.dumps(summary("fixed", jitter_ms, performances, np.full_like(true_bpm, DEFAULT_BPM), {"cost_ms": 0.0})))

        # A player's run of calls at one tempo that drifts from call to call; the tracker starts at the default.
        played, tracked = [], []
        for run in sessions:
            tracker = TempoTracker(DEFAULT_BPM, BAR)
            bpm = rng.uniform(60, 180)
            for phrase in run:
                played.append(perform(phrase, bpm, jitter_ms / 1000, rng))
                tracked.append(tracker.update(played[-1].onsets))
                bpm *= 1 + rng.normal(0, SESSION_DRIFT)
        alone = [estimate_tempo(p.onsets, DEFAULT_BPM, BAR) for p in played]
        print(json.dumps(summary("follow_tracked", jitter_ms, played, tracked, {"session_calls": SESSION_CALLS})))
        print(json.dumps(summary("follow_runs_call_by_call", jitter_ms, played, alone, {"session_calls": SESSION_CALLS})))


def summary(name: str, jitter_ms: int, performances: list[Performance], estimated: list | np.ndarray, extra: dict) -> dict:
    """The figures of one estimator: `estimated` holds TempoEstimates (an unreadable call keeps the
    default tempo, as the daemon would) or plain tempi."""
    true_bpm = np.array([p.bpm for p in performances])
    readings = [e for e in estimated if isinstance(e, TempoEstimate)]
    bpm = np.array([e.bpm if e.readable else DEFAULT_BPM for e in readings]) if readings else np.asarray(estimated)
    ratio = bpm / true_bpm
    error = np.abs(ratio - 1) * 100
    octave = (np.abs(ratio / 2 - 1) <= OCTAVE_TOLERANCE) | (np.abs(ratio * 2 - 1) <= OCTAVE_TOLERANCE)
    figures = {"estimator": name, "jitter_ms": jitter_ms, "calls": int(true_bpm.size),
               "bpm_error_p50_pct": round(float(np.percentile(error, 50)), 2),
               "bpm_error_p90_pct": round(float(np.percentile(error, 90)), 2),
               "octave_error_rate": round(float(octave.mean()), 4),
               "within_4pct_rate": round(float((error <= 4).mean()), 4)}
    if readings:
        origin_error = np.array([abs(e.origin - p.bar_line) if e.readable else np.inf for e, p in zip(readings, performances)])
        beat_one = (error <= 4) & (origin_error <= 0.5 * 15.0 / true_bpm)
        reasons = Counter(e.reason.split(":")[0] for e in readings if not e.readable)
        figures |= {"beat_one_rate": round(float(beat_one.mean()), 4),
                    "unreadable_rate": round(sum(reasons.values()) / len(readings), 4), "unreadable": dict(reasons)}
    return figures | extra


def profile(split: str) -> None:
    """Count, over the 4/4 bars of a split, how far each onset is from the next one, by the onset's
    16th in its bar: and whether it is a chord: the rhythm model daemon.tempo reads (written to daemon/data)."""
    gaps = np.zeros((BAR, MAX_GAP), dtype=np.int64)
    chords = np.zeros((BAR, 2), dtype=np.int64)
    for item in load_folder(REFERENCE / split, report=None).loaded:
        onsets, sizes = np.unique([n.start for n in item.notes], return_counts=True)
        bars = np.array(item.bar_starts)
        if onsets.size < 2:
            continue
        bar_index = np.searchsorted(bars, onsets, side="right") - 1
        keep = np.diff(np.append(bars, np.inf))[bar_index] == BAR
        position = onsets - bars[bar_index]
        np.add.at(chords, (position[keep], (sizes[keep] > 1).astype(int)), 1)
        gap = np.minimum(np.diff(onsets), MAX_GAP) - 1
        np.add.at(gaps, (position[:-1][keep[:-1]], gap[keep[:-1]]), 1)
    TRANSITIONS_FILE.write_text(json.dumps({"source": f"reference/{split}, 4/4 bars", "gap_counts": gaps.tolist(),
                                            "single_chord_counts": chords.tolist()}) + "\n")
    print(f"{TRANSITIONS_FILE}: {int(chords.sum())} onsets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--places", type=int, default=6, help="windows of each length per file")
    parser.add_argument("--draws", type=int, default=3, help="tempi each phrase is played at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="write the rhythm model from the training files and stop")
    args = parser.parse_args()
    if args.profile:
        profile("train")
    else:
        run(args.split, args.places, args.draws, args.seed)


if __name__ == "__main__":
    main()
