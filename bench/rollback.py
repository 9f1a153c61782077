"""What a player's note costs the accompaniment: the `Accompanist` itself (no clock, no ports), both
models, the default engine (kernel and precision "auto"), the test files' upper part played into
it, the model accompanying in 21-59 and deciding `--lookahead` sixteenths ahead.

    python bench/rollback.py [--lookahead STEPS] [--files N] [--bars N] [--threads 1]

Each file: its notes split at middle C; the upper part's first `--bars` bars go in as a player's
notes do live: at each sixteenth, the keys struck then (player_onset: rolled back to where they
belong, in with the model's guess of their length), the keys released then (player_note: the
length put right), then the model decides to the lookahead and playback fixes the step.
Prints one JSON line, per model:
- <kind>_onset_ms_p50/p99/max: a key struck going into the stream (rolled back to where it
  belongs, what sounded after it fed again), the live daemon's `rollback_ms_p99`;
- <kind>_redecide_ms_p50/p99/max: the keys struck at a step, plus deciding again up to the
  lookahead: how long after a key the worker is ready to fix the next step (the daemon's
  `redecide_ms_p99`); goal: p99 under 5 ms;
- <kind>_settle_ms_p50/p99/max: the releases of a step putting the lengths right, plus deciding
  the lookahead again (off the critical path: the daemon settles only when the time to the next
  step allows);
- <kind>_rollbacks_per_onset, revised / unrevised lengths, moved notes, <kind>_ms_per_step (all
  the accompanist's time over the sixteenths played) and the budget, one 16th at 200 bpm (75 ms).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.accompanist import Accompanist  # noqa: E402
from daemon.config import load_settings  # noqa: E402
from daemon.engine import Engine  # noqa: E402
from daemon.live_tokenizer import TokenStream  # noqa: E402
from daemon.paths import shipped_weights  # noqa: E402
from daemon.sampling import make_generator  # noqa: E402
from daemon.steering import accompaniment_options  # noqa: E402
from daemon.weights import load_weights  # noqa: E402
from training.midi_loading import load_folder  # noqa: E402

BUDGET_MS = 60_000 / 200 / 4  # one sixteenth at 200 bpm
BAR = 16
MIDDLE_C = 60


def play(accompanist: Accompanist, upper: list, lookahead: int, steps: int) -> dict[str, list[float]]:
    """Play the upper part into the accompanist step by step, as the daemon's worker does: the keys
    struck at a step go in and the model decides to the lookahead again (timed: onset, redecide);
    the keys released are kept, and settle once the step is fixed, with the lookahead decided again
    (timed: settle; the daemon settles only where a step leaves the time)."""
    onsets: dict[int, list] = {}
    releases: dict[int, list] = {}
    for note in upper:
        onsets.setdefault(note.start, []).append(note)
        releases.setdefault(note.start + note.duration, []).append(note)
    times: dict[str, list[float]] = {"onset": [], "redecide": [], "settle": []}
    for step in range(steps):
        began = time.perf_counter()
        struck = sorted(onsets.get(step, []), key=lambda n: n.pitch)
        for note in struck:
            accompanist.player_onset(note.start, note.pitch, note.velocity)
        onsets_done = time.perf_counter()
        accompanist.decide(step + lookahead, step + 1)
        if struck:
            times["onset"].append((onsets_done - began) * 1000 / len(struck))
            times["redecide"].append((time.perf_counter() - began) * 1000)
        accompanist.fix(step)
        for note in releases.get(step, []):
            accompanist.player_note(note)
        if accompanist.releases:
            began = time.perf_counter()
            accompanist.settle()
            accompanist.decide(step + 1 + lookahead, step + 2)
            times["settle"].append((time.perf_counter() - began) * 1000)
    accompanist.finish()
    return times


def percentiles(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name}_p50": round(float(np.percentile(values, 50)), 3),
            f"{name}_p99": round(float(np.percentile(values, 99)), 3),
            f"{name}_max": round(float(np.max(values)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/reference/test"))
    parser.add_argument("--lookahead", type=int, default=2, help="sixteenths decided ahead ([jam] accompany_lookahead_steps)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uppers = []
    for item in load_folder(args.data, report=lambda *_: None).loaded:
        upper = [n for n in item.notes if n.pitch >= MIDDLE_C]
        if upper:
            first = min(n.start for n in upper)
            uppers.append([n._replace(start=n.start - first) for n in upper if n.start < first + args.bars * BAR])
        if len(uppers) == args.files:
            break
    jam = load_settings(None, {}).jam
    results: dict[str, float | int | str] = {"lookahead_steps": args.lookahead, "files": len(uppers),
                                             "bars": args.bars, "budget_ms": BUDGET_MS}
    for kind in ("transformer", "lstm"):
        engine = Engine(load_weights(shipped_weights(kind)).model, "cpu", precision="auto")
        results[f"{kind}_engine"] = f"{engine.kernel} {engine.precision}"
        times: dict[str, list[float]] = {"onset": [], "redecide": [], "settle": []}
        stats, seconds = [], 0.0
        for number, upper in enumerate(uppers):
            stream = TokenStream(BAR, history=1 << 16)
            engine.reset(list(stream.tokens))
            options, steering = accompaniment_options(jam, BAR, (21, 59))  # the defaults, as the daemon builds them
            accompanist = Accompanist(engine, stream, options, (21, 59), make_generator(number), 80, steering)
            began = time.perf_counter()
            for name, values in play(accompanist, upper, args.lookahead, args.bars * BAR + BAR).items():
                times[name] += values
            seconds += time.perf_counter() - began
            stats.append(accompanist.stats)
        for name, values in times.items():
            results.update(percentiles(f"{kind}_{name}_ms", values))
        results.update({
            f"{kind}_onsets": len(times["onset"]),
            f"{kind}_rollbacks_per_onset": round(sum(s.count for s in stats) / len(times["onset"]), 3),
            f"{kind}_revised": sum(s.revised for s in stats),
            f"{kind}_unrevised": sum(s.unrevised for s in stats),
            f"{kind}_moved": sum(s.moved for s in stats),
            f"{kind}_ms_per_step": round(seconds * 1000 / (len(uppers) * (args.bars * BAR + BAR)), 3),
        })
    print(json.dumps(results))


if __name__ == "__main__":
    main()
