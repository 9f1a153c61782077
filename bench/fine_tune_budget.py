"""Test NLL after a training budget: the shipped weights untouched, fine-tuned from them
(`antiphon-train fit --init`), and trained from scratch (the paper's recipe), on a data folder's
own test files, plus the fine-tuned weights on the reference test set (what they forgot).

    nice -n 19 .venv/bin/python bench/fine_tune_budget.py --model transformer --data ../shared/data/schubert \
        --minutes 2 5 10 20 --step-seconds 2.29 --threads 2 --windows 2048

A budget of minutes is run as the number of optimizer steps those minutes hold at --step-seconds (the
2-thread seconds per step of `bench/train_throughput.py --threads 2` on a quiet machine), so that the
numbers do not depend on what else the CPU is doing; evaluation time is not counted. Each run is one
epoch as long as the largest budget (no test until its end), stopped and resumed at each budget; the
weights evaluated are those of the checkpoint at that step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.model import build_model, config_from_dict  # noqa: E402
from daemon.paths import shipped_weights  # noqa: E402
from daemon.weights import read_config, save_weights  # noqa: E402
from training.checkpoint import has_checkpoint, load_checkpoint  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.fit import Limits, Recipe, fit  # noqa: E402


def checkpoint_weights(run: Path, into: Path) -> Path:
    """The weights of a run's latest checkpoint as a weights folder."""
    saved = load_checkpoint(run / "checkpoint")
    config = config_from_dict(saved.state["model_config"])
    model = build_model(config)
    model.load_state_dict(saved.model)
    return save_weights(into, model, config, {"steps": saved.state["step"], "parent": saved.state.get("parent")})


def nll(weights: Path, data: Path, windows: int) -> tuple[float, float]:
    result = evaluate(weights, data, windows, seed=0, report=None)
    return result.nll, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("transformer", "lstm"), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--step-seconds", type=float, required=True, help="seconds per training step on 2 quiet threads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=2048, help="test windows per evaluation (seed 0)")
    parser.add_argument("--conditions", nargs="+", default=["untouched", "fine-tuned", "scratch"])
    parser.add_argument("--lr", type=float, help="fine-tuning lr (default: the fine-tuning recipe's)")
    parser.add_argument("--reference", type=Path, help="also score the fine-tuned weights of the last budget on this "
                        "data folder's test files (e.g. ../shared/data/reference)")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder); a run found "
                        "there goes on from its checkpoint, past the budgets it has reached")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = [max(1, round(minutes * 60 / args.step_seconds)) for minutes in args.minutes]
    parent = shipped_weights(args.model)
    print(f"{args.model} on {args.data}, {args.threads} threads, {args.step_seconds} s/step: "
          + ", ".join(f"{m:g} min = {s} steps" for m, s in zip(args.minutes, steps)), flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="fine-tune-budget-"))
    rows = []
    if "untouched" in args.conditions:
        value, error = nll(parent, args.data, args.windows)
        rows.append({"condition": "untouched", "minutes": 0, "steps": 0, "nll": value, "stderr": error})
        print(json.dumps(rows[-1]), flush=True)
    one_epoch = {"epoch_windows": 8 * steps[-1], "eval_windows": 8}
    recipes = {
        "fine-tuned": Recipe.fine_tune(read_config(parent)[0], lr=args.lr, **one_epoch),
        "scratch": Recipe.paper(args.model, **one_epoch),
    }
    conditions = [condition for condition in ("fine-tuned", "scratch") if condition in args.conditions]
    for minutes, budget in zip(args.minutes, steps):  # both conditions per budget: paired early
        for condition in conditions:
            run = work / condition
            done = has_checkpoint(run / "checkpoint")
            if done and load_checkpoint(run / "checkpoint").state["step"] >= budget:
                continue  # measured by an earlier process on this --work folder
            fit(args.data, run, recipes[condition] if not done else None, Limits(max_epochs=1, max_steps=budget),
                resume=done, device="cpu", progress=False, report=lambda line: None,
                init=parent if condition == "fine-tuned" and not done else None)
            weights = checkpoint_weights(run, work / f"{condition}-{budget}")
            value, error = nll(weights, args.data, args.windows)
            row = {"condition": condition, "minutes": minutes, "steps": budget, "nll": value, "stderr": error}
            if condition == "fine-tuned" and args.reference and minutes == args.minutes[-1]:
                row["reference_nll"], row["reference_stderr"] = nll(weights, args.reference, args.windows)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'condition':12s} {'minutes':>7s} {'steps':>6s}  NLL on {args.data.name}/test")
    for row in rows:
        extra = f"   reference {row['reference_nll']:.4f} ± {row['reference_stderr']:.4f}" if "reference_nll" in row else ""
        print(f"{row['condition']:12s} {row['minutes']:>7g} {row['steps']:>6d}  {row['nll']:.4f} ± {row['stderr']:.4f}{extra}")


if __name__ == "__main__":
    main()
