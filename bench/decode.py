"""Per-token decode latency at a full 256-token context: the cached engine against recomputing
the whole window for every token (the paper's method), both models, measured side by side.

    python bench/decode.py [--tokens N] [--threads T ...] [--device cpu|cuda] [--weights-root DIR]

Prints a table, then one JSON line with transformer_ms, transformer_recompute_ms, lstm_ms,
lstm_recompute_ms (the first --threads value), their ratios, every thread count measured, and the
device. Random-initialised models unless --weights-root holds transformer/ and lstm/ folders
(latency does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.engine import CONTEXT, Engine  # noqa: E402
from daemon.model import build_model, default_config  # noqa: E402
from daemon.weights import load_weights  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cached_ms(engine: Engine, tokens: list[int], repeats: int) -> float:
    """Median over repeats of the mean step time, each step at a full 256-token context."""
    engine.reset(tokens[:CONTEXT])
    engine.feed(tokens[CONTEXT : CONTEXT + 16])  # warm-up, also wraps the ring once
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.feed(tokens[CONTEXT : CONTEXT + 64])
        synchronize(engine.device)
        times.append((time.perf_counter() - start) / 64 * 1000)
    return statistics.median(times)


def recompute_ms(model: torch.nn.Module, tokens: list[int], device: torch.device, count: int) -> float:
    """The paper's generation: a full forward over the last 256 tokens for every new token."""
    window = torch.tensor([tokens[:CONTEXT]], device=device)
    with torch.inference_mode():
        model(window)
        times = []
        for index in range(count):
            window = torch.tensor([tokens[index + 1 : index + 1 + CONTEXT]], device=device)
            start = time.perf_counter()
            logits = model(window)[0, -1]
            logits.float().cpu()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--recompute", type=int, default=15, help="full-window forwards timed per model")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights-root", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 153, (CONTEXT + 128,), generator=generator).tolist()
    results: dict[str, float | str | dict] = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)}
    per_threads: dict[str, dict[str, float]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        row: dict[str, float] = {}
        for kind in ("transformer", "lstm"):
            if args.weights_root:
                model = load_weights(args.weights_root / kind, device).model
            else:
                torch.manual_seed(0)
                model = build_model(default_config(kind)).eval()
            engine = Engine(model, device)
            row[f"{kind}_ms"] = cached_ms(engine, tokens, args.repeats)
            row[f"{kind}_recompute_ms"] = recompute_ms(engine.model, tokens, device, args.recompute)
            row[f"{kind}_speedup"] = row[f"{kind}_recompute_ms"] / row[f"{kind}_ms"]
            print(
                f"threads={threads} {kind:11s} cached {row[f'{kind}_ms']:7.3f} ms/token   "
                f"recompute {row[f'{kind}_recompute_ms']:8.2f} ms/token   x{row[f'{kind}_speedup']:.1f}",
                flush=True,
            )
        per_threads[str(threads)] = row
    results.update(per_threads[str(args.threads[0])])
    results["threads"] = args.threads[0]
    results["by_threads"] = per_threads
    print(json.dumps(results))


if __name__ == "__main__":
    main()
