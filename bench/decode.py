"""Per-token decode latency at a full 256-token context: the cached engine against recomputing
the whole window for every token (the paper's method), both models, measured side by side.

    python bench/decode.py [--threads T ...] [--precision fp32 fp16 ...] [--kernel torch native]
                           [--device cpu|cuda] [--weights-root DIR] [--nll WEIGHTS_ROOT]

Prints a table, then one JSON line with transformer_ms, transformer_recompute_ms, lstm_ms,
lstm_recompute_ms (the engine as the daemon builds it by default: precision and kernel "auto";
the first --threads value), their ratios (*_speedup), *_best_ms (the fastest repeat: on a shared
machine the least disturbed one), the same for every kernel/precision pair measured as
<kind>_<kernel>_<precision>_ms, every thread count measured, and the device. Random-initialised
models unless --weights-root holds transformer/ and lstm/ folders (latency does not depend on the
weights' values). With --nll, also the mean NLL per token of each pair for the trained weights
there (each of transformer/ and lstm/ that exists), streamed over reference test files as in
bench/rolling_context.py: the price of fp16/int8.
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

from daemon.decoding import PRECISIONS, automatic_precision  # noqa: E402
from daemon.engine import CONTEXT, Engine, resolve_kernel  # noqa: E402
from daemon.model import build_model, default_config  # noqa: E402
from daemon.weights import load_weights  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cached_ms(engine: Engine, tokens: list[int], repeats: int, batch: int = 16) -> tuple[float, float]:
    """(median, minimum) over repeats of the mean step time of `batch` steps, each at a full
    256-token context."""
    engine.reset(tokens[:CONTEXT])
    engine.feed(tokens[CONTEXT : CONTEXT + 16])  # warm-up, also wraps the ring once
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.feed(tokens[CONTEXT : CONTEXT + batch])
        synchronize(engine.device)
        times.append((time.perf_counter() - start) / batch * 1000)
    return statistics.median(times), min(times)


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
    parser.add_argument("--repeats", type=int, default=60, help="batches of 16 steps timed per engine")
    parser.add_argument("--recompute", type=int, default=15, help="full-window forwards timed per model")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, help="engine options (default: all on cpu)")
    parser.add_argument("--kernel", nargs="+", choices=("torch", "native"), help="(default: both on cpu)")
    parser.add_argument("--weights-root", type=Path)
    parser.add_argument("--nll", type=Path, metavar="WEIGHTS_ROOT", help="NLL of each precision on test files")
    parser.add_argument("--nll-files", type=int, default=4)
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = engine_variants(device, args.precision, args.kernel)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 153, (CONTEXT + 128,), generator=generator).tolist()
    name = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    results: dict[str, float | str | dict] = {"device": name}
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
            row[f"{kind}_recompute_ms"] = recompute_ms(model.to(device).eval(), tokens, device, args.recompute)
            for kernel, precision in variants:
                name = f"{kind}_{kernel}_{precision}"
                engine = Engine(model, device, precision=precision, kernel=kernel)
                row[f"{name}_ms"], row[f"{name}_best_ms"] = cached_ms(engine, tokens, args.repeats)
                row[f"{name}_speedup"] = row[f"{kind}_recompute_ms"] / row[f"{name}_ms"]
                print(
                    f"threads={threads} {kind:11s} {kernel:6s} {precision} cached {row[f'{name}_ms']:7.3f} ms/token "
                    f"(best {row[f'{name}_best_ms']:.3f})   recompute {row[f'{kind}_recompute_ms']:8.2f} ms/token   "
                    f"x{row[f'{name}_speedup']:.1f}",
                    flush=True,
                )
            default = f"{kind}_{'_'.join(default_variant(device))}"
            for suffix in ("ms", "best_ms", "speedup"):
                if f"{default}_{suffix}" in row:
                    row[f"{kind}_{suffix}"] = row[f"{default}_{suffix}"]
        per_threads[str(threads)] = row
    results.update(per_threads[str(args.threads[0])])
    results["threads"] = args.threads[0]
    results["by_threads"] = per_threads
    results["default"] = "_".join(default_variant(device))
    if args.nll:
        results.update(precision_nll(args.nll, variants, args.nll_files))
    print(json.dumps(results))


def default_variant(device: torch.device) -> tuple[str, str]:
    """(kernel, precision) of the daemon's default engine ("auto" for both) on this device."""
    kernel = resolve_kernel("auto", device)
    return kernel, automatic_precision(device, kernel)


def engine_variants(
    device: torch.device, precisions: list[str] | None, kernels: list[str] | None
) -> list[tuple[str, str]]:
    """Every (kernel, precision) pair asked for that can run here."""
    if device.type != "cpu":
        return [("torch", "fp32")]
    pairs = []
    for kernel in kernels or ["torch", "native"]:
        for precision in precisions or list(PRECISIONS):
            if kernel == "native" and resolve_kernel("auto", device) != "native":
                continue
            pairs.append((kernel, precision))
    return pairs


def precision_nll(weights_root: Path, variants: list[tuple[str, str]], files: int) -> dict[str, float]:
    """Mean NLL per token of each precision, streamed like the daemon over reference test files."""
    from rolling_context import streamed  # bench/ is this script's folder, first on sys.path

    from training.midi_loading import load_folder

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference" / "test"
    streams = [item.tokens for item in load_folder(data, report=lambda *_: None).loaded if len(item.tokens) > 2 * CONTEXT]
    results = {}
    for kind in ("transformer", "lstm"):
        if not (weights_root / kind).is_dir():
            print(f"{kind:11s} no weights in {weights_root / kind}: NLL not measured", flush=True)
            continue
        model = load_weights(weights_root / kind).model
        first = "_".join(variants[0])
        for kernel, precision in variants:
            engine, losses = Engine(model, "cpu", precision=precision, kernel=kernel), []
            for tokens in streams[:files]:
                losses += streamed(engine, tokens, range(CONTEXT - 1, 2 * CONTEXT - 1))[0]
            name = f"{kind}_{kernel}_{precision}"
            results[f"{name}_nll"] = statistics.fmean(losses)
            delta = results[f"{name}_nll"] - results[f"{kind}_{first}_nll"]
            print(f"{kind:11s} {kernel:6s} {precision} NLL {results[f'{name}_nll']:.4f} ({delta:+.4f} vs {first}) "
                  f"over {len(losses)} tokens", flush=True)
    return results


if __name__ == "__main__":
    main()
