"""`antiphon-train`: fit, evaluate and stats over folders of MIDI files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from daemon.paths import installed_version


def _fit_parser(commands) -> None:
    parser = commands.add_parser(
        "fit",
        help="train weights on a data folder (the paper's recipe by default)",
        description="Train a model on DATA (train/ and test/ subfolders, or one folder split by file) into a "
        "weights folder OUT: best weights (model.safetensors, config.json), train_log.jsonl, loss.png, "
        "checkpoint/. Defaults are the paper's recipe (Section 5.2).",
    )
    parser.add_argument("data", type=Path, help="data folder")
    parser.add_argument("--model", choices=("lstm", "transformer"), help="model kind (required unless --resume or --init)")
    parser.add_argument("--init", metavar="WEIGHTS",
                        help="fine-tune: start from these weights (a weights folder, or 'transformer' / 'lstm' for the "
                        "shipped ones) with the fine-tuning recipe as defaults (lr 5e-4 constant, transposition within "
                        "6 semitones, a test on 256 windows every 160 training windows); the model comes from the weights")
    parser.add_argument("--out", type=Path, required=True, help="output weights folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint")
    parser.add_argument("--change-recipe", action="store_true",
                        help="with --resume: the --lr, --lr-decay, --lr-floor, --augment-transpose and --transpose-max "
                        "given here replace the checkpoint's from now on (recorded in the checkpoint and provenance); "
                        "copy OUT first to keep the unchanged run as a baseline")
    recipe = parser.add_argument_group("recipe (fixed for a run; a resumed run keeps the checkpoint's unless --change-recipe)")
    recipe.add_argument("--batch-size", type=int, help="windows per step and process (paper: 8)")
    recipe.add_argument("--lr", type=float, help="initial learning rate (paper: LSTM 5e-4, Transformer 1e-3)")
    recipe.add_argument("--lr-decay", type=float, help="lr factor per epoch (paper: LSTM 0.8, Transformer 1)")
    recipe.add_argument("--lr-floor", type=float, help="lowest lr (paper: LSTM 5e-5)")
    recipe.add_argument("--epoch-fraction", type=float, help="share of the training windows per epoch (paper: 0.02)")
    recipe.add_argument("--epoch-windows", type=int,
                        help="training windows per epoch whatever the folder's size (overrides --epoch-fraction; "
                        "fine-tuning: 160)")
    recipe.add_argument("--augment-transpose", action=argparse.BooleanOptionalAction, default=None,
                        help="transpose each training window by a random interval within the piano range "
                        "(paper: off; fine-tuning: on)")
    recipe.add_argument("--transpose-max", type=int,
                        help="with --augment-transpose: at most this many semitones either way (0: any; fine-tuning: 6)")
    recipe.add_argument("--eval-windows", type=int,
                        help="evaluate each epoch on a seeded fixed sample of N test windows (default: all; fine-tuning: 256)")
    recipe.add_argument("--test-ratio", type=float, help="test share of files when DATA has no train/ test/ (0.1)")
    recipe.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    recipe.add_argument("--model-config", type=json.loads,
                        help="JSON object overriding the model's default config, e.g. '{\"hidden_size\": 64}'")
    limits = parser.add_argument_group("limits (free to change on --resume)")
    limits.add_argument("--max-epochs", type=int, default=100, help="stop after this many epochs (100)")
    limits.add_argument("--patience", type=int, default=3,
                        help="stop when the test loss has not improved for this many epochs (3)")
    limits.add_argument("--max-steps", type=int, help="checkpoint and stop once the run has made this many steps")
    wall = limits.add_mutually_exclusive_group()
    wall.add_argument("--max-hours", type=float, help="checkpoint and stop after this process ran this long")
    wall.add_argument("--max-minutes", type=float, help="the same in minutes: --max-minutes 10 gives it ten minutes")
    limits.add_argument("--checkpoint-minutes", type=float, default=10.0,
                        help="also checkpoint mid-epoch this often, so a hard kill loses at most that (10; 0: every step)")
    machine = parser.add_argument_group("machine")
    machine.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    machine.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    machine.add_argument("--no-amp", action="store_true", help="no bf16 mixed precision on CUDA")
    machine.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_fit(args) -> int:
    from training.fit import CHANGEABLE, Limits, Recipe, describe_stop, fit
    from training.parent import Parent

    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = {
        "batch_size": args.batch_size, "lr": args.lr, "lr_decay": args.lr_decay, "lr_floor": args.lr_floor,
        "epoch_fraction": args.epoch_fraction, "epoch_windows": args.epoch_windows,
        "augment_transpose": args.augment_transpose,
        "transpose_max": args.transpose_max,
        "eval_windows": args.eval_windows, "test_ratio": args.test_ratio, "seed": args.seed,
        "model_config": args.model_config,
    }
    minutes = args.max_hours * 60 if args.max_hours is not None else args.max_minutes
    limits = Limits(args.max_epochs, args.patience, args.max_steps, minutes, args.checkpoint_minutes)
    change = {key: chosen[key] for key in CHANGEABLE} if args.change_recipe else None
    common = dict(device=args.device, amp=not args.no_amp, progress=not args.no_progress, change=change, init=args.init)
    if args.resume:
        result = fit(args.data, args.out, None, limits, resume=True, expect=dict(chosen, model=args.model), **common)
    elif args.init is not None:
        parent = Parent.find(args.init)
        parent.check_compatible(args.model, args.model_config)
        recipe = Recipe.fine_tune(parent.config, **{k: v for k, v in chosen.items() if k != "model_config"})
        result = fit(args.data, args.out, recipe, limits, **common)
    else:
        if args.model is None:
            raise UsageError("fit: --model lstm|transformer (or --init WEIGHTS to fine-tune) is required for a new run")
        result = fit(args.data, args.out, Recipe.paper(args.model, **chosen), limits, **common)
    if int(os.environ.get("RANK", "0")) == 0:
        print(describe_stop(result))
        if result.stop in ("signal", "max_steps", "max_time"):
            print(f"resume with: antiphon-train fit {args.data} --out {args.out} --resume")
    return 0


def _evaluate_parser(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="mean NLL per token of weights on a data folder's windows",
        description="Mean NLL per token of WEIGHTS_DIR on the 257-token windows of DATA_DIR (its test/ subfolder "
        "when it has train/ and test/), plain and renormalised over the tokens the grammar allows.",
    )
    parser.add_argument("weights", help="weights folder, or 'transformer' / 'lstm' for the shipped ones")
    parser.add_argument("data", type=Path, help="data folder")
    parser.add_argument("--windows", type=int, help="a seeded sample of N windows (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window sample (0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", help="cpu, cuda ... (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _run_evaluate(args) -> int:
    from daemon.paths import weights_folder
    from training.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(weights_folder(args.weights), args.data, args.windows, args.seed, args.batch_size, args.device,
                      progress=not args.json and sys.stderr.isatty(), report=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{result.kind} weights {result.weights} on {result.data}: {result.windows:,} of {result.windows_total:,} windows")
    print(f"  NLL per token          {result.nll:.4f} ± {result.stderr:.4f}")
    print(f"  NLL under the grammar  {result.nll_grammar:.4f} ± {result.stderr_grammar:.4f}")
    if result.masked_targets:
        print(f"  {result.masked_targets} targets the grammar forbids were left out of the grammar NLL")
    print(f"  {result.seconds:.1f} s")
    return 0


def _stats_parser(commands) -> None:
    parser = commands.add_parser(
        "stats",
        help="files, notes, tokens and training windows of a folder of MIDI files",
        description="Files read and skipped, notes kept and dropped (by reason), tokens, and 257-token training "
        "windows at stride 1 of DIR (per split when it has train/ and test/).",
    )
    parser.add_argument("folder", type=Path, help="folder of MIDI files")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _run_stats(args) -> int:
    from training.stats import data_stats, format_stats

    stats = data_stats(args.folder)
    print(json.dumps(stats) if args.json else "\n".join(format_stats(stats)))
    return 0


def _export_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="a run's best weights as a folder to ship or share",
        description="Copy the best weights of the run RUN into OUT (config with the run's provenance, "
        "train_log.jsonl, loss.png; no checkpoint), optionally stored as float16 (half the size).",
    )
    parser.add_argument("run", type=Path, help="a run's output folder (or any weights folder)")
    parser.add_argument("out", type=Path, help="the weights folder to write")
    parser.add_argument("--half", action="store_true", help="store the weights as float16")


def _run_export(args) -> int:
    from training.export import export_weights

    out = export_weights(args.run, args.out, args.half)
    print(f"wrote {out} ({'float16' if args.half else 'float32'})")
    return 0


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antiphon-train", description="Train and evaluate Antiphon weights.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    _fit_parser(commands)
    _evaluate_parser(commands)
    _stats_parser(commands)
    _export_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from daemon.weights import WeightsError
    from training.checkpoint import CheckpointError
    from training.dataset import DataError
    from training.fit import FitError
    from training.midi_loading import MidiLoadError

    args = build_parser().parse_args(argv)
    runners = {"fit": _run_fit, "evaluate": _run_evaluate, "stats": _run_stats, "export": _run_export}
    try:
        return runners[args.command](args)
    except (UsageError, FitError, DataError, CheckpointError, WeightsError, MidiLoadError) as error:
        print(f"antiphon-train {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # only before training starts or on a second Ctrl-C: a first one during training checkpoints and stops
        print(f"antiphon-train {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
