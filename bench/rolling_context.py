"""How should the decode state behave past 256 tokens? Streams reference test files through
each option and reports the mean NLL per token of the next token against recomputing the full
256-token window at every step (the paper's method), plus the cost per token of each.

    python bench/rolling_context.py [--files 4] [--positions 192] [--weights-root weights]

Options:
  Transformer: slide (a ring KV cache: old keys kept as computed, distances from absolute
               positions), refresh/K (slide, but re-prefill the last 256 tokens every K tokens)
  LSTM:        carry (h, c forever) against re-prime (a fresh state over the last 256 tokens)
Each file is streamed from its first token; positions 256..256+N are scored.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.engine import CONTEXT, Engine  # noqa: E402
from daemon.weights import load_weights  # noqa: E402
from training.midi_loading import load_folder  # noqa: E402


def nll(logits: np.ndarray, target: int) -> float:
    peak = logits.max()
    return float(peak + math.log(np.exp(logits - peak).sum()) - logits[target])


def recompute(model: torch.nn.Module, tokens: list[int], positions: range, batch: int = 16) -> tuple[list[float], float]:
    """NLL at each position from a fresh forward over the 256 tokens ending there."""
    losses, start = [], time.perf_counter()
    with torch.inference_mode():
        for first in range(positions.start, positions.stop, batch):
            chunk = range(first, min(first + batch, positions.stop))
            windows = torch.tensor([tokens[p - CONTEXT + 1 : p + 1] for p in chunk])
            logits = model(windows)[:, -1].float().numpy()
            losses += [nll(row, tokens[p + 1]) for row, p in zip(logits, chunk)]
    return losses, (time.perf_counter() - start) * 1000 / len(positions)


def streamed(engine: Engine, tokens: list[int], positions: range, refresh: int | None = None) -> tuple[list[float], float]:
    """NLL at each position with the engine fed token by token from the file's start."""
    engine.reset(tokens[:1])
    engine.feed(tokens[1 : positions.start + 1])
    losses, start = [], time.perf_counter()
    for index, position in enumerate(positions):
        losses.append(nll(engine.logits, tokens[position + 1]))
        if refresh and (index + 1) % refresh == 0:
            engine.reset(tokens[position + 2 - CONTEXT : position + 2])
        else:
            engine.feed(tokens[position + 1 : position + 2])
    return losses, (time.perf_counter() - start) * 1000 / len(positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "reference" / "test")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--positions", type=int, default=192)
    parser.add_argument("--weights-root", type=Path, default=ROOT / "weights")
    parser.add_argument("--refresh", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    streams = [item.tokens for item in load_folder(args.data).loaded if len(item.tokens) > CONTEXT + args.positions + 1]
    streams = streams[: args.files]
    results: dict[str, float] = {"files": len(streams), "positions_per_file": args.positions}
    for kind in ("transformer", "lstm"):
        model = load_weights(args.weights_root / kind).model
        engine = Engine(model, "cpu")
        options = {"recompute": lambda t, r, model=model: recompute(model, t, r)}
        if kind == "transformer":
            options["slide"] = lambda t, r, engine=engine: streamed(engine, t, r)
            for k in args.refresh:
                options[f"refresh{k}"] = lambda t, r, k=k, engine=engine: streamed(engine, t, r, refresh=k)
        else:
            options["carry"] = lambda t, r, engine=engine: streamed(engine, t, r)
        for name, run in options.items():
            losses, costs = [], []
            for tokens in streams:
                positions = range(CONTEXT - 1, CONTEXT - 1 + args.positions)
                file_losses, ms = run(tokens, positions)
                losses += file_losses
                costs.append(ms)
            results[f"{kind}_{name}_nll"] = float(np.mean(losses))
            results[f"{kind}_{name}_ms"] = float(np.mean(costs))
        base = results[f"{kind}_recompute_nll"]
        for name in options:
            delta = results[f"{kind}_{name}_nll"] - base
            print(f"{kind:11s} {name:10s} NLL {results[f'{kind}_{name}_nll']:.4f} ({delta:+.4f} vs recompute)  "
                  f"{results[f'{kind}_{name}_ms']:7.2f} ms/token", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
