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

With --jack N, N of those calls a jitter (10 and 25 ms) are also played through real JACK ports
into the real daemon (`antiphon run --tempo-mode follow`, a fresh daemon a call, so each is read
with the prior at 100 bpm) and answered (one bar): the "daemon_jack" line has the same figures
for the tempo the daemon read (its log), and answer_on_grid_rate, the share of answer onsets
within a quarter of a 16th of the grid of the player's true tempo and beat one, phase included
(calls_on_grid: the share of calls whose answer is all on it).

    python bench/tempo_follow.py [--split test|train] [--places 6] [--draws 3] [--seed 0]
    python bench/tempo_follow.py --jack 12   # and 12 calls a jitter through real JACK ports into the daemon
    python bench/tempo_follow.py --profile   # writes the rhythm model daemon.tempo uses, from the training files

Needs the `bench` extra (pretty_midi) and the `training` extra (muspy) to read the files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.jam_latency, and the daemon measured is this checkout's

from daemon.jack_server import JackServer  # noqa: E402
from daemon.playing import Keyboard  # noqa: E402
from daemon.tempo import MAX_GAP, TRANSITIONS_FILE, TempoEstimate, TempoTracker, estimate_tempo  # noqa: E402
from training.midi_loading import load_folder  # noqa: E402

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


READ_LINE = re.compile(r"tempo (\S+) bpm read from the call|tempo: the call is .*; keeping (\S+) bpm")
ON_GRID = 0.25  # of a 16th


def answer_on_grid(performance: Performance, origin: float, ons: list[float]) -> np.ndarray:
    """For each answer onset (seconds on the bench's clock): on the player's true grid?"""
    step = 15.0 / performance.bpm
    place = (np.asarray(ons) - origin - performance.bar_line) / step
    return np.abs(place - np.round(place)) <= ON_GRID


def daemon_reads(performance: Performance, number: int) -> tuple[float, np.ndarray]:
    """One call through JACK into a fresh daemon in follow mode: (the tempo it read, for each of
    its answer's onsets whether it is on the true grid)."""
    from bench.jam_latency import ANTIPHON, DaemonLog  # the JACK part only

    command = [str(ANTIPHON), "run", "--midi-api", "jack", "--virtual", "--client-name", f"antiphon-tempo{number}",
               "--bpm", str(DEFAULT_BPM), "--tempo-mode", "follow", "--answer-bars", "1", "--seed", "0",
               "--no-follow-clock", "--takes-dir", ""]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    log = DaemonLog(process)
    keyboard = None
    try:
        ready = log.wait_for("ready:", 0, 120)
        if ready is None:
            raise RuntimeError("the daemon did not start:\n" + "\n".join(log.lines))
        ports = re.search(r"in=(\S+) out=(\S+?),", ready[1]).groups()
        keyboard = Keyboard("jack", ports[0], ports[1], f"bench-tempo{number}")
        origin = time.monotonic() + 0.2 - 1.0  # the performance starts one second after its time zero
        events = sorted([(t, 1, mido.Message("note_on", note=int(p), velocity=int(v))) for t, p, v in
                         zip(performance.onsets, performance.pitches, performance.velocities)]
                        + [(t, 0, mido.Message("note_off", note=int(p))) for t, p in
                           zip(performance.offsets, performance.pitches)], key=lambda e: (e[0], e[1]))
        for offset, _, message in events:
            wait = origin + offset - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            keyboard.send(message)
        read = log.wait_for(READ_LINE, 0, 30)
        answered = log.wait_for("jam: answer:", 0, 30)
        time.sleep(0.1)
        ons = [t for t, m in keyboard.take() if m.type == "note_on" and m.velocity > 0]
        bpm = float(next(g for g in read[1].groups() if g)) if read else DEFAULT_BPM
        return bpm, answer_on_grid(performance, origin, ons) if answered else np.zeros(0, dtype=bool)
    finally:
        if keyboard is not None:
            keyboard.close()
        process.terminate()
        process.wait(timeout=10)


def run_jack(split: str, places: int, calls_per_jitter: int, seed: int) -> None:
    calls = [run[0] for run in phrases(REFERENCE / split, places)]
    with JackServer(period=256, realtime=False):
        for jitter_ms in JITTERS_MS[1:]:
            rng = np.random.default_rng(seed + 1000 + jitter_ms)
            chosen = rng.choice(len(calls), size=min(calls_per_jitter, len(calls)), replace=False)
            performances = [perform(calls[i], rng.uniform(60, 180), jitter_ms / 1000, rng) for i in chosen]
            read, on_grid = [], []
            for number, performance in enumerate(performances):
                bpm, answer = daemon_reads(performance, number)
                read.append(bpm)
                on_grid.append(answer)
                print(f"jitter {jitter_ms} ms, call {number}: played {performance.bpm:.1f} bpm, read {bpm:.1f}, "
                      f"answer {int(answer.sum())}/{answer.size} onsets on the grid", file=sys.stderr)
            onsets = np.concatenate(on_grid) if on_grid else np.zeros(0, dtype=bool)
            print(json.dumps(summary("daemon_jack", jitter_ms, performances, np.array(read), {
                "answer_on_grid_rate": round(float(onsets.mean()), 4) if onsets.size else None,
                "calls_on_grid": round(float(np.mean([a.size > 0 and a.all() for a in on_grid])), 4)})), flush=True)


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
    parser.add_argument("--jack", type=int, default=0, metavar="N",
                        help="also play N calls a jitter through JACK into the real daemon")
    args = parser.parse_args()
    if args.profile:
        profile("train")
        return
    run(args.split, args.places, args.draws, args.seed)
    if args.jack:
        run_jack(args.split, args.places, args.jack, args.seed)


if __name__ == "__main__":
    main()
