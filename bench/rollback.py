"""What a rollback costs: roll the engine back to a player's note inside the lookahead, feed the
note, and re-decide what had been decided past it, both models, the default engine (kernel and
precision "auto"), on the token streams of the reference test files.

    python bench/rollback.py [--weights-root DIR] [--lookahead STEPS] [--trials N] [--files N]

Each trial stands at a random point of a stream past the 256-token context, decides ahead
(feeds the stream's own tokens for the next `--lookahead` sixteenths), then, timed: rolls back to
a random position inside what it decided, feeds a player's note (3 tokens) and re-decides the
tokens it took back, each sampled under the grammar's mask and fed, as the accompanist does.
Prints one JSON line: <kind>_rollback_ms_p50/p99/max, the engine's rollback() alone
(<kind>_rollback_only_ms_p99), <kind>_tokens_taken_back_p50/max, the
step's cost for scale (<kind>_step_ms_p50) and the budget, one 16th at 200 bpm (75 ms).
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

from daemon.codec import BAR, MAX_NOTE_OFFSET, Note, is_offset, note_event_tokens, token_value  # noqa: E402
from daemon.engine import CONTEXT, Engine  # noqa: E402
from daemon.grammar import INITIAL, NEED_OFFSET, advance, next_mask  # noqa: E402
from daemon.sampling import make_generator, sample  # noqa: E402
from daemon.weights import load_weights  # noqa: E402
from training.midi_loading import load_folder  # noqa: E402

BUDGET_MS = 60_000 / 200 / 4  # one sixteenth at 200 bpm


def token_steps(tokens: list[int]) -> list[int]:
    """The grid step each token of a stream stands at (the bar's, or its note's)."""
    steps, bar, offset = [], 0, 0
    for index, token in enumerate(tokens):
        if is_offset(token):
            offset = token_value(token)
        elif token == BAR and index:
            bar += offset
            offset = 0
        steps.append(bar + offset)
    return steps


def trial(engine: Engine, tokens: list[int], steps: list[int], at: int, lookahead: int,
          rng: np.random.Generator) -> tuple[float, float, int, float]:
    """(milliseconds of rollback + player's note + re-deciding, of the rollback alone, tokens
    taken back, ms per step)."""
    engine.reset(tokens[at - CONTEXT : at])
    ahead = at
    while ahead < len(tokens) and steps[ahead] <= steps[at] + lookahead:
        ahead += 1
    began = time.perf_counter()
    engine.feed(tokens[at:ahead])  # decided ahead
    step_ms = (time.perf_counter() - began) * 1000 / max(1, ahead - at)
    back_to = int(rng.integers(at, ahead + 1))
    state = INITIAL
    for token in tokens[:back_to]:  # the grammar state there (not timed: the stream keeps it)
        state = advance(state, token)
    began = time.perf_counter()
    engine.rollback(CONTEXT + back_to - at)  # the engine counts from its reset
    rollback_ms = (time.perf_counter() - began) * 1000
    if state.phase == NEED_OFFSET and state.last_offset < MAX_NOTE_OFFSET:  # a player's note fits here
        player = note_event_tokens(0, Note(state.last_offset + 1, 72, 2))[0]
        engine.feed(player)
        for token in player:
            state = advance(state, token)
    for _ in range(ahead - back_to):
        token = sample(engine.logits, next_mask(state), 1.0, 0.95, rng)
        engine.feed([token])
        state = advance(state, token)
    return (time.perf_counter() - began) * 1000, rollback_ms, ahead - back_to, step_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/reference/test"))
    parser.add_argument("--weights-root", type=Path, default=ROOT / "weights")
    parser.add_argument("--lookahead", type=int, default=4, help="sixteenths decided ahead ([jam] lookahead_steps)")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    streams = [item.tokens for item in load_folder(args.data, report=lambda *_: None).loaded
               if len(item.tokens) > CONTEXT + 64][: args.files]
    rng = make_generator(1)
    results: dict[str, float | int | str] = {"lookahead_steps": args.lookahead, "trials": args.trials,
                                             "budget_ms": BUDGET_MS}
    for kind in ("transformer", "lstm"):
        engine = Engine(load_weights(args.weights_root / kind).model, "cpu", precision="auto")
        results[f"{kind}_engine"] = f"{engine.kernel} {engine.precision}"
        costs, alone, taken, steps_ms = [], [], [], []
        for number in range(args.trials):
            tokens = streams[number % len(streams)]
            steps = token_steps(tokens)
            ms, rollback_ms, back, step_ms = trial(engine, tokens, steps, int(rng.integers(CONTEXT, len(tokens) - 64)),
                                      args.lookahead, rng)
            costs.append(ms)
            alone.append(rollback_ms)
            taken.append(back)
            steps_ms.append(step_ms)
        results.update({
            f"{kind}_rollback_ms_p50": round(float(np.percentile(costs, 50)), 3),
            f"{kind}_rollback_ms_p99": round(float(np.percentile(costs, 99)), 3),
            f"{kind}_rollback_ms_max": round(float(np.max(costs)), 3),
            f"{kind}_rollback_only_ms_p99": round(float(np.percentile(alone, 99)), 3),
            f"{kind}_tokens_taken_back_p50": float(np.percentile(taken, 50)),
            f"{kind}_tokens_taken_back_max": int(np.max(taken)),
            f"{kind}_step_ms_p50": round(float(np.percentile(steps_ms, 50)), 3),
        })
    print(json.dumps(results))


if __name__ == "__main__":
    main()
