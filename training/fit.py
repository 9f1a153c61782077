"""Train a model on a folder of MIDI files with the paper's recipe (Section 5.2), resumable exactly.

An epoch is a seeded random fraction (2%) of the training windows in batches of 8; after each epoch
the model is evaluated on the test windows and checkpointed; training stops when the test loss has not
improved for `patience` epochs, and the best epoch's weights are the output. Under torchrun each
process trains on its share of every step's windows (DistributedDataParallel).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from daemon.codec import VOCAB_SIZE
from daemon.model import ModelConfig, build_model, config_from_dict, default_config, parameter_count
from daemon.weights import CONFIG_FILE, load_weights, save_weights
from training.checkpoint import Checkpoint, has_checkpoint, load_checkpoint, save_checkpoint
from training.dataset import WindowDataset, load_train_test
from training.plots import plot_losses, write_log

# Seeds of the independent random streams: np.random.default_rng([seed, STREAM, ...])
SAMPLER_STREAM, AUGMENT_STREAM, EVAL_STREAM = 1, 2, 3
PAPER_SCHEDULES = {
    "lstm": {"lr": 5e-4, "lr_decay": 0.8, "lr_floor": 5e-5},
    "transformer": {"lr": 1e-3, "lr_decay": 1.0, "lr_floor": 0.0},
}
CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"
EVAL_BATCH = 32
STATUS_EVERY_S = 300  # without progress bars, a status line this often keeps long epochs visible in a log


class FitError(Exception):
    """A run that cannot start or continue; the message says why."""


@dataclass
class Recipe:
    """Everything that fixes a run's trajectory; saved in the checkpoint and fixed on resume."""

    model: str = "lstm"
    model_config: dict = field(default_factory=dict)  # overrides of the daemon's default config
    batch_size: int = 8
    lr: float = 5e-4
    lr_decay: float = 0.8
    lr_floor: float = 5e-5
    epoch_fraction: float = 0.02
    augment_transpose: bool = False
    transpose_max: int = 0  # semitones either way; 0: any interval that keeps the window on the piano
    eval_windows: int = 0  # 0: every test window
    test_ratio: float = 0.1  # only for a folder without train/ and test/
    seed: int = 0

    @classmethod
    def paper(cls, model: str, **changes) -> Recipe:
        """The paper's recipe for a model kind, with `changes` (None values ignored)."""
        if model not in PAPER_SCHEDULES:
            raise FitError(f"unknown model {model!r} (expected one of {sorted(PAPER_SCHEDULES)})")
        values = dict(PAPER_SCHEDULES[model], model=model)
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of the epoch after `epoch` completed ones: max(floor, lr * decay**epoch)."""
        return max(self.lr_floor, self.lr * self.lr_decay**epoch)

    def config(self) -> ModelConfig:
        try:
            return config_from_dict({**default_config(self.model).to_dict(), **self.model_config})
        except ValueError as error:
            raise FitError(f"model config: {error}") from None

    def check(self) -> None:
        if self.batch_size < 1:
            raise FitError(f"batch size {self.batch_size} must be at least 1")
        if not 0.0 < self.epoch_fraction <= 1.0:
            raise FitError(f"epoch fraction {self.epoch_fraction} must lie in (0, 1]")
        if self.lr <= 0 or self.lr_floor < 0 or self.lr_decay <= 0:
            raise FitError(
                f"learning rate {self.lr} and decay {self.lr_decay} must be positive, floor {self.lr_floor} not negative"
            )
        if self.eval_windows < 0:
            raise FitError(f"eval windows {self.eval_windows} must be 0 (all) or more")
        if self.transpose_max < 0:
            raise FitError(f"transpose max {self.transpose_max} must be 0 (any that fits) or more semitones")


# What a resumed run may change (--change-recipe): how it steps, not what it trains on or how it is judged.
CHANGEABLE = ("lr", "lr_decay", "lr_floor", "augment_transpose", "transpose_max")


@dataclass
class Limits:
    """When to stop; free to change on resume."""

    max_epochs: int = 100
    patience: int = 3
    max_steps: int | None = None  # optimizer steps of the whole run, resumes included
    max_hours: float | None = None  # wall time of this process
    checkpoint_minutes: float | None = 10.0  # also checkpoint mid-epoch this often: a hard kill loses at most that


@dataclass
class FitResult:
    out: Path
    stop: str  # "patience", "max_epochs", "max_steps", "max_hours", "signal"
    epoch: int
    step: int
    best_epoch: int | None
    best_test_loss: float | None
    history: list[dict]


def window_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean NLL of every position: 256 inputs predict the same tokens shifted by one."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE).float(), batch[:, 1:].reshape(-1))


class Distributed:
    """This process's place under torchrun (one process of one when run directly)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (so all stop at the same step)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, item):
        if not self.active:
            return [item]
        items = [None] * self.world
        torch.distributed.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def pick_device(name: str | None, local_rank: int = 0) -> torch.device:
    if name is None or name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FitError(f"device {name!r} asked for but CUDA is not available here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def epoch_steps(sample: np.ndarray, batch_size: int, world: int) -> list[np.ndarray]:
    """The epoch's windows per optimizer step: each step takes batch_size * world windows, split
    evenly across processes. Under DDP the sample is trimmed to a multiple of world so no process
    is ever left without windows."""
    if world > 1:
        sample = sample[: len(sample) - len(sample) % world]
    chunk = batch_size * world
    return [sample[start : start + chunk] for start in range(0, len(sample), chunk)]


def epoch_sample(rng: np.random.Generator, windows: int, fraction: float) -> np.ndarray:
    """A random `fraction` of the windows (at least one), without repeats, in random order."""
    count = max(1, round(fraction * windows))
    return rng.choice(windows, size=count, replace=False)


def evaluation_indices(test: WindowDataset, count: int, seed: int) -> np.ndarray:
    """All test windows, or a seeded fixed sample of `count` of them (the same every epoch)."""
    if count <= 0 or count >= len(test):
        return np.arange(len(test))
    return np.sort(np.random.default_rng([seed, EVAL_STREAM]).choice(len(test), size=count, replace=False))


def autocast_for(device: torch.device, kind: str, amp: bool):
    """bf16 autocast for the Transformer on CUDA; the LSTM keeps float32 (cuDNN's fused LSTM is
    already fast there and bf16 RNN support varies)."""
    enabled = amp and device.type == "cuda" and kind == "transformer" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class StopRequest:
    """SIGTERM/SIGINT ask the run to checkpoint and stop at the next step; a second SIGINT kills."""

    def __init__(self, report: Callable[[str], None]):
        self.signal: int | None = None
        self.report = report
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        self.report(f"received {signal.Signals(signum).name}: checkpointing at the next step, then stopping")

    def __enter__(self) -> StopRequest:
        if _on_main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _on_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    return tensors


class Run:
    """One process's view of a training run."""

    def __init__(
        self,
        data: str | os.PathLike,
        out: str | os.PathLike,
        recipe: Recipe | None,
        limits: Limits,
        resume: bool,
        device: str | None,
        amp: bool,
        progress: bool,
        report: Callable[[str], None],
        expect: dict | None = None,
        change: dict | None = None,
    ):
        self.started = time.monotonic()
        self.out = Path(out)
        self.checkpoint_dir = self.out / CHECKPOINT_DIR
        self.limits = limits
        self.progress = progress
        self.amp = amp
        self.device = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = Distributed(self.device)
        self.report = report if self.dist.main else (lambda line: None)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        saved, changed_from = None, {}
        if resume:
            if not has_checkpoint(self.checkpoint_dir):
                raise FitError(f"{self.checkpoint_dir}: no checkpoint to resume from (start without --resume)")
            saved = load_checkpoint(self.checkpoint_dir)
            recipe = Recipe(**saved.state["recipe"])
            change = {k: v for k, v in (change or {}).items() if v is not None and getattr(recipe, k) != v}
            refused = sorted(set(change) - set(CHANGEABLE))
            if refused:
                raise FitError(f"{', '.join(refused)} cannot change on resume (only {', '.join(CHANGEABLE)} can)")
            changed_from = {key: getattr(recipe, key) for key in change}
            recipe = replace(recipe, **change)
            for key, value in (expect or {}).items():
                if value is not None and getattr(recipe, key) != value:
                    raise FitError(
                        f"{key} {value!r} differs from the checkpoint's {getattr(recipe, key)!r}; "
                        "a resumed run keeps its recipe (only the limits, device and threads may change)"
                    )
        else:
            if has_checkpoint(self.checkpoint_dir) or (self.out / "model.safetensors").exists():
                raise FitError(f"{self.out}: already holds a run; pass --resume to continue it or choose another --out")
            if recipe is None:
                raise FitError("a fresh run needs a recipe")
            if change:
                raise FitError("a recipe change changes a resumed run; add --resume")
        recipe.check()
        self.recipe = recipe
        self.config = recipe.config()
        self.data_folder = Path(data).resolve()
        self.train, self.test = load_train_test(self.data_folder, recipe.test_ratio, recipe.seed, report=self.report)
        self.data_fingerprint = {"train": self.train.fingerprint(), "test": self.test.fingerprint()}
        if saved is not None and saved.state["data"] != self.data_fingerprint:
            raise FitError(
                f"{self.data_folder}: not the data the checkpoint was trained on "
                f"(then {saved.state['data']}, now {self.data_fingerprint})"
            )
        self.eval_indices = evaluation_indices(self.test.windows, recipe.eval_windows, recipe.seed)

        torch.manual_seed(recipe.seed)
        self.model = build_model(self.config).to(self.device)
        if self.dist.rank > 0:
            torch.manual_seed(recipe.seed + self.dist.rank)  # each process its own dropout masks
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=recipe.lr_at(0))
        self.sampler = np.random.default_rng([recipe.seed, SAMPLER_STREAM])
        self.augment = np.random.default_rng([recipe.seed, AUGMENT_STREAM, self.dist.rank])
        self.state = {
            "version": 1,
            "recipe": asdict(recipe),
            "model_config": self.config.to_dict(),
            "data_folder": str(self.data_folder),
            "data": self.data_fingerprint,
            "world_size": self.dist.world,
            "epoch": 0,  # completed epochs
            "batch_in_epoch": 0,  # steps done in the epoch under way
            "step": 0,
            "epoch_loss_sum": 0.0,
            "epoch_tokens": 0,
            "epoch_train_seconds": 0.0,
            "sampler_at_epoch_start": self.sampler.bit_generator.state,
            "augment": [None] * self.dist.world,
            "best_epoch": None,
            "best_test_loss": None,
            "since_best": 0,
            "history": [],
            "recipe_changes": [],  # each: the step and epoch it took effect at, the values before and after
            "wall_seconds": 0.0,
        }
        if saved is not None:
            self._restore(saved)
            if changed_from:
                to = {key: getattr(recipe, key) for key in changed_from}
                self.state["recipe_changes"].append(
                    {"step": self.state["step"], "epoch": self.state["epoch"], "from": changed_from, "to": to}
                )
                self.report(f"recipe changed from step {self.state['step']:,}: " + ", ".join(
                    f"{key} {changed_from[key]!r} -> {value!r}" for key, value in to.items()))
        self.wall_before = self.state["wall_seconds"]  # spent by earlier processes of this run
        self.saved_at = self.status_at = time.monotonic()
        self.net: nn.Module = self.model
        if self.dist.active:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _restore(self, saved: Checkpoint) -> None:
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        # the recipe stays this run's own: the checkpoint's plus any --change-recipe
        self.state.update({k: v for k, v in saved.state.items() if k in self.state and k not in ("world_size", "recipe")})
        rank = self.dist.rank
        if saved.state["world_size"] != self.dist.world:
            self.report(
                f"note: checkpoint was written by {saved.state['world_size']} processes, now {self.dist.world}; "
                "the run continues but not bit-for-bit"
            )
            self.state["augment"] = [None] * self.dist.world
        if f"torch_cpu/rank{rank}" in saved.rng:
            torch.set_rng_state(saved.rng[f"torch_cpu/rank{rank}"])
        if self.device.type == "cuda" and f"torch_cuda/rank{rank}" in saved.rng:
            torch.cuda.set_rng_state(saved.rng[f"torch_cuda/rank{rank}"], self.device)
        if self.state["augment"][rank] is not None:
            self.augment.bit_generator.state = self.state["augment"][rank]
        self.sampler.bit_generator.state = self.state["sampler_at_epoch_start"]

    def save(self) -> None:
        """Checkpoint the current state (every process takes part; the first one writes)."""
        states = self.dist.gather({"augment": self.augment.bit_generator.state, "rng": rng_tensors(self.device)})
        self.check_in_sync()
        if self.dist.main:
            rng = {f"{name}/rank{r}": t for r, item in enumerate(states) for name, t in item["rng"].items()}
            self.state["augment"] = [item["augment"] for item in states]
            self.state["wall_seconds"] = self.wall_seconds()
            save_checkpoint(
                self.checkpoint_dir,
                Checkpoint(self.model.state_dict(), self.optimizer.state_dict(), rng, dict(self.state)),
            )
        self.dist.barrier()
        self.saved_at = time.monotonic()

    def checkpoint_due(self) -> bool:
        minutes = self.limits.checkpoint_minutes
        return self.dist.any(minutes is not None and time.monotonic() - self.saved_at >= minutes * 60)

    def check_in_sync(self) -> None:
        """Under DDP every process must hold the same parameters; a drift is a bug, so stop loudly."""
        if not self.dist.active:
            return
        total = sum(p.detach().double().sum().item() for p in self.model.parameters())
        sums = self.dist.gather(total)
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            raise FitError(f"processes out of sync: parameter sums {sums}")

    def wall_seconds(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    def stop_reason(self, stopper: StopRequest, evaluating: bool = False) -> str | None:
        """Why to stop before the next step, agreed by every process. An evaluation is not cut
        short for --max-steps: the steps it follows are already done."""
        reason = None
        if stopper.signal is not None:
            reason = "signal"
        elif self.limits.max_hours is not None and time.monotonic() - self.started >= self.limits.max_hours * 3600:
            reason = "max_hours"
        elif not evaluating and self.limits.max_steps is not None and self.state["step"] >= self.limits.max_steps:
            reason = "max_steps"
        if self.dist.any(reason is not None):
            return reason or "signal"
        return None

    def evaluate(self, stopper: StopRequest) -> tuple[float | None, str | None]:
        """(mean test NLL per token over the evaluation windows, None), or (None, why) when asked to
        stop midway (the checkpoint then resumes with this evaluation)."""
        from training.evaluate import window_nll

        self.model.eval()
        share = np.array_split(self.eval_indices, self.dist.world)[self.dist.rank]
        batches = [share[i : i + EVAL_BATCH] for i in range(0, len(share), EVAL_BATCH)]
        most = int(max(self.dist.gather(len(batches))))
        total = 0.0
        bar = self._bar(most, f"test {self.state['epoch'] + 1}")
        with torch.no_grad(), autocast_for(self.device, self.config.kind, self.amp):
            for index in range(most):
                reason = self.stop_reason(stopper, evaluating=True)
                if reason is not None:
                    bar.close()
                    return None, reason
                if index < len(batches):
                    total += float(window_nll(self.model, self.test.windows.batch(batches[index]).to(self.device)).sum())
                bar.update(1)
        bar.close()
        total, windows = self.dist.sum([total, float(len(share))])
        return total / windows, None

    def _bar(self, total: int, description: str, initial: int = 0):
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True,
            disable=not (self.progress and self.dist.main),
        )

    def run(self) -> FitResult:
        with StopRequest(self.report) as stopper:
            stop = self._loop(stopper)
        self.finish(stop)
        return FitResult(
            self.out, stop, self.state["epoch"], self.state["step"], self.state["best_epoch"],
            self.state["best_test_loss"], list(self.state["history"]),
        )

    def _loop(self, stopper: StopRequest) -> str:
        recipe, state = self.recipe, self.state
        dirty = False
        self.report(
            f"{self.config.kind}: {parameter_count(self.model):,} parameters on {self.device} x{self.dist.world}; "
            f"train {len(self.train.windows):,} windows ({len(self.train.files)} files"
            f"{f', {len(self.train.skipped)} skipped' if self.train.skipped else ''}), "
            f"test {len(self.eval_indices):,} of {len(self.test.windows):,} windows"
        )
        while True:
            if state["since_best"] >= self.limits.patience and state["best_epoch"] is not None:
                reason = "patience"
            elif state["epoch"] >= self.limits.max_epochs:
                reason = "max_epochs"
            else:
                reason = self.stop_reason(stopper)
            if reason is not None:
                if dirty:
                    self.save()
                return reason
            lr = recipe.lr_at(state["epoch"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            # the sampler restarts from the epoch's first state, so a resumed epoch redraws the same windows
            self.sampler.bit_generator.state = state["sampler_at_epoch_start"]
            steps = epoch_steps(
                epoch_sample(self.sampler, len(self.train.windows), recipe.epoch_fraction), recipe.batch_size, self.dist.world
            )
            epoch = state["epoch"] + 1
            bar = self._bar(len(steps), f"epoch {epoch}", state["batch_in_epoch"])
            self.net.train()
            while state["batch_in_epoch"] < len(steps):
                reason = self.stop_reason(stopper)
                if reason is not None:
                    bar.close()
                    self.save()
                    return reason
                began = time.monotonic()
                mine = np.array_split(steps[state["batch_in_epoch"]], self.dist.world)[self.dist.rank]
                batch = self.train.windows.batch(mine, self.augment if recipe.augment_transpose else None,
                                                 recipe.transpose_max).to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with autocast_for(self.device, self.config.kind, self.amp):
                    loss = window_loss(self.net, batch)
                loss.backward()
                self.optimizer.step()
                tokens = batch.shape[0] * (batch.shape[1] - 1)
                state["epoch_loss_sum"] += float(loss.detach()) * tokens
                state["epoch_tokens"] += tokens
                state["batch_in_epoch"] += 1
                state["step"] += 1
                state["epoch_train_seconds"] += time.monotonic() - began
                dirty = True
                if self.checkpoint_due():
                    self.save()
                    dirty = False
                bar.update(1)
                running = state["epoch_loss_sum"] / state["epoch_tokens"]
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}")
                if not self.progress and time.monotonic() - self.status_at >= STATUS_EVERY_S:
                    self.status_at = time.monotonic()
                    self.report(
                        f"epoch {epoch}: step {state['batch_in_epoch']}/{len(steps)}, running train loss {running:.4f}, "
                        f"{state['epoch_tokens'] / max(state['epoch_train_seconds'], 1e-9):,.0f} tokens/s"
                    )
            bar.close()
            test_loss, reason = self.evaluate(stopper)
            if test_loss is None:
                self.save()
                return reason
            train_loss, tokens, seconds = self.dist.sum(
                [state["epoch_loss_sum"], float(state["epoch_tokens"]), state["epoch_train_seconds"]]
            )
            record = {
                "epoch": epoch,
                "train_loss": train_loss / tokens,
                "test_loss": test_loss,
                "lr": lr,
                "tokens_per_s": tokens / max(seconds / self.dist.world, 1e-9),
                "wall_time": self.wall_seconds(),
                "steps": state["step"],
            }
            state["history"].append(record)
            state["epoch"] = epoch
            improved = state["best_test_loss"] is None or test_loss < state["best_test_loss"]
            if improved:
                state["best_epoch"], state["best_test_loss"], state["since_best"] = epoch, test_loss, 0
                if self.dist.main:
                    save_weights(self.out, self.model, self.config, self.provenance("running"))
            else:
                state["since_best"] += 1
            state["batch_in_epoch"] = 0
            state["epoch_loss_sum"], state["epoch_tokens"], state["epoch_train_seconds"] = 0.0, 0, 0.0
            state["sampler_at_epoch_start"] = self.sampler.bit_generator.state
            self.save()
            dirty = False
            if self.dist.main:
                write_log(self.out / LOG_FILE, state["history"])
                plot_losses(self.out / PLOT_FILE, state["history"], f"{self.config.kind} on {self.data_folder.name}")
            self.report(
                f"epoch {epoch}: train {record['train_loss']:.4f}  test {test_loss:.4f}  lr {lr:.2e}  "
                f"{record['tokens_per_s']:,.0f} tokens/s"
                + ("  (best)" if improved else f"  (best {state['best_test_loss']:.4f} at epoch {state['best_epoch']})")
            )

    def provenance(self, stop: str) -> dict:
        state = self.state
        return {
            "trained_by": "antiphon-train fit",
            "data_folder": str(self.data_folder),
            "data": self.data_fingerprint,
            "skipped_files": self.train.skipped + self.test.skipped,
            "recipe": asdict(self.recipe),
            "recipe_changes": state["recipe_changes"],
            "epochs": state["epoch"],
            "steps": state["step"],
            "best_epoch": state["best_epoch"],
            "best_epoch_steps": next((r["steps"] for r in state["history"] if r["epoch"] == state["best_epoch"]), None),
            "test_nll": state["best_test_loss"],
            "test_windows": len(self.eval_indices),
            "device": str(self.device),
            "processes": self.dist.world,
            "wall_seconds": round(self.wall_seconds(), 1),
            "stop": stop,
            "torch": torch.__version__,
        }

    def finish(self, stop: str) -> None:
        """Rewrite the best weights' provenance with how the run ended (a run resumed from a
        checkpoint alone has no best weights until an epoch improves on the checkpoint's best)."""
        if self.dist.main and self.state["best_epoch"] is not None and (self.out / CONFIG_FILE).exists():
            best = load_weights(self.out)
            save_weights(self.out, best.model, best.config, self.provenance(stop))
        self.dist.barrier()
        self.dist.close()


def fit(
    data: str | os.PathLike,
    out: str | os.PathLike,
    recipe: Recipe | None = None,
    limits: Limits | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    amp: bool = True,
    progress: bool = True,
    report: Callable[[str], None] = print,
    expect: dict | None = None,
    change: dict | None = None,
) -> FitResult:
    """Train (or continue training) into `out`; see the module docstring. On resume the recipe comes
    from the checkpoint; `expect` (recipe field -> value) names values the caller asked for, and a
    mismatch is an error rather than a silent change of recipe. `change` (fields of CHANGEABLE ->
    value) deliberately changes the resumed run's recipe from its current step on, recorded in the
    checkpoint and the weights' provenance."""
    return Run(data, out, recipe, limits or Limits(), resume, device, amp, progress, report, expect, change).run()


def describe_stop(result: FitResult) -> str:
    reasons = {
        "patience": "test loss stopped improving",
        "max_epochs": "reached --max-epochs",
        "max_steps": "reached --max-steps",
        "max_hours": "reached --max-hours",
        "signal": "stopped by a signal",
    }
    best = (
        f"best epoch {result.best_epoch} (test {result.best_test_loss:.4f}) in {result.out}"
        if result.best_epoch is not None
        else "no epoch finished yet, so no weights written"
    )
    return f"{reasons[result.stop]} after {result.step} steps, {result.epoch} epochs; {best}"
