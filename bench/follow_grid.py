"""How well the grid follows a player who drifts while the model plays along (follow mode).

Eight-bar stretches of real rhythm (every onset of 4/4 passages of the reference and Schubert
test files, chords once) are played at a tempo drawn between 70 and 160 bpm that either stays
(steady), slows by 15% or speeds up by 15% over the eight bars (linearly in the length of a
16th), with Gaussian onset jitter of 10 and 25 ms. The grid starts right (the tempo and beat one
of the first onset, as a perfect reading would leave it) and, at each onset, is asked where that
onset's 16th falls before it is told the onset; then it is told. Two grids:
- fixed: the grid as read, kept (what accompany mode did before it followed);
- follow: daemon.tempo.GridFollower, as the daemon runs it (Timeline.follow).
One JSON line per (folder, tempo path, jitter, grid): stretches, onsets (after the first bar),
grid_error_ms (mean |grid's time of the onset's 16th - the player's time without jitter|, where
the model's notes at that 16th would sound against the player's pulse; ± its standard error
over stretches), grid_error_p90_ms, misplaced_rate (onsets the grid put on another 16th than
the one meant: the tokenizer would place them there), and lost_rate (stretches whose grid ends
more than a 16th off).

    python bench/follow_grid.py [--places 8] [--seed 0] [--data FOLDER ...]

Needs the `training` extra (muspy) to read the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tempo_follow import phrases  # noqa: E402
from daemon.clock import TempoGrid  # noqa: E402
from daemon.tempo import CHORD_S, GridFollower  # noqa: E402

BARS = 8
JITTERS_MS = (10, 25)
PATHS = {"steady": 1.0, "slowing": 1.15, "speeding": 1 / 1.15}  # the 16th's length at the end, relative


def stretches(folder: Path, places: int) -> list[np.ndarray]:
    """Onset steps (chords once) of eight-bar stretches: four consecutive 2-bar windows."""
    runs = phrases(folder, places, session=BARS // 2)
    return [np.unique(np.concatenate([p.steps + 32 * i for i, p in enumerate(run)])) for run in runs]


def play(steps: np.ndarray, bpm: float, end_ratio: float) -> np.ndarray:
    """The onset times without jitter: each 16th's length moves linearly to end_ratio times the first's."""
    first = 15.0 / bpm
    lengths = first * np.linspace(1.0, end_ratio, BARS * 16 + 1)
    times = np.concatenate([[0.0], np.cumsum(lengths)])
    return 1.0 + times[steps]


def measure(steps: np.ndarray, true: np.ndarray, played: np.ndarray, bpm: float,
            follow: bool) -> tuple[list[float], int, bool]:
    grid = TempoGrid(1.0, 15.0 / bpm)  # as read: step 0 at 1 s, the first 16th's length
    follower = GridFollower(grid, played[0])  # step 0: a bar line
    errors, misplaced = [], 0
    for step, t_true, t in zip(steps, true, played):
        if step >= 16:
            errors.append(abs(grid.time_at(step) - t_true))
            misplaced += round(grid.position(t)) != step
        if follow and follower.onset(t):
            grid = follower.grid
    lost = abs(grid.time_at(steps[-1]) - true[-1]) > grid.step
    return errors, misplaced, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--places", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, nargs="+",
                        default=[ROOT.parent / "shared/data/reference/test", ROOT.parent / "shared/data/schubert/test"])
    args = parser.parse_args()
    for folder in args.data:
        runs = stretches(folder, args.places)
        for path, end_ratio in PATHS.items():
            for jitter_ms in JITTERS_MS:
                rng = np.random.default_rng(args.seed)
                results = {"fixed": [], "follow": []}
                for steps in runs:
                    if steps.size < 8:
                        continue
                    bpm = float(rng.uniform(70, 160))
                    true = play(steps, bpm, end_ratio)
                    played = true + rng.normal(0.0, jitter_ms / 1000, true.size)
                    order = np.argsort(played, kind="stable")
                    # Onsets closer than a chord's spread are one onset to the daemon (its first).
                    keep = np.diff(played[order], prepend=-1.0) > CHORD_S
                    steps_played, true_played, times = steps[order][keep], true[order][keep], played[order][keep]
                    for name in results:
                        results[name].append(measure(steps_played, true_played, times, bpm, name == "follow"))
                for name, rows in results.items():
                    means = np.array([np.mean(e) for e, _, _ in rows if e]) * 1000
                    every = np.concatenate([e for e, _, _ in rows if e]) * 1000
                    print(json.dumps({
                        "folder": folder.parent.name, "tempo": path, "jitter_ms": jitter_ms, "grid": name,
                        "stretches": len(rows), "onsets": int(every.size),
                        "grid_error_ms": round(float(means.mean()), 1),
                        "grid_error_se_ms": round(float(means.std(ddof=1) / np.sqrt(means.size)), 1),
                        "grid_error_p90_ms": round(float(np.percentile(every, 90)), 1),
                        "misplaced_rate": round(sum(m for _, m, _ in rows) / every.size, 4),
                        "lost_rate": round(sum(lost for _, _, lost in rows) / len(rows), 3),
                    }), flush=True)


if __name__ == "__main__":
    main()
