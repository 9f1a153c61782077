"""Train a model on a folder of MIDI files with the paper's recipe (Section 5.2), resumable exactly;
or fine-tune trained weights (`init`) on a small folder with a recipe made for that.

An epoch is a seeded random fraction (2%) of the training windows in batches of 8; after each epoch
the model is evaluated on the test windows and checkpointed; training stops when the test loss has not
improved for `patience` epochs, and the best epoch's weights are the output. Under torchrun each
process trains on its share of every step's windows (DistributedDataParallel).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from daemon.codec import VOCAB_SIZE
from daemon.model import ModelConfig, build_model, parameter_count
from daemon.weights import CONFIG_FILE, load_weights, save_weights
from training.checkpoint import Checkpoint, has_checkpoint, load_checkpoint, save_checkpoint
from training.dataset import WindowDataset, load_train_test
from training.distributed import Distributed, pick_device
from training.parent import Parent
from training.plots import plot_losses, write_log
from training.recipe import CHANGEABLE, FitError, Limits, Recipe, resumed_recipe
from training.run_state import RunState

__all__ = ["CHANGEABLE", "FitError", "FitResult", "Limits", "Recipe", "Run", "describe_stop", "fit", "pick_device"]

# Seeds of the independent random streams: np.random.default_rng([seed, STREAM, ...])
SAMPLER_STREAM, AUGMENT_STREAM, EVAL_STREAM = 1, 2, 3
CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"
EVAL_BATCH = 32
STATUS_EVERY_S = 300  # without progress bars, a status line this often keeps long epochs visible in a log


@dataclass
class FitResult:
    out: Path
    stop: str  # "patience", "max_epochs", "max_steps", "max_time", "signal"
    epoch: int
    step: int
    best_epoch: int | None
    best_test_loss: float | None
    history: list[dict]


def window_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean NLL of every position: 256 inputs predict the same tokens shifted by one."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE).float(), batch[:, 1:].reshape(-1))


def epoch_steps(sample: np.ndarray, batch_size: int, world: int) -> list[np.ndarray]:
    """The epoch's windows per optimizer step: each step takes batch_size * world windows, split
    evenly across processes. Under DDP the sample is trimmed to a multiple of world so no process
    is ever left without windows."""
    if world > 1:
        sample = sample[: len(sample) - len(sample) % world]
    chunk = batch_size * world
    return [sample[start : start + chunk] for start in range(0, len(sample), chunk)]


def epoch_sample(rng: np.random.Generator, windows: int, count: int) -> np.ndarray:
    """`count` of the windows, without repeats, in random order."""
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
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def progress_bar(total: int, description: str, initial: int = 0, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True, disable=not enabled)


def test_loss(
    model: nn.Module, windows: WindowDataset, indices: np.ndarray, dist: Distributed, device: torch.device,
    stop: Callable[[], str | None], bar,
) -> tuple[float | None, str | None]:
    """(mean NLL per token of `model` on the windows `indices`, None), each process scoring its
    share; or (None, why) when `stop` gives a reason midway."""
    from training.evaluate import window_nll

    share = np.array_split(indices, dist.world)[dist.rank]
    batches = [share[i : i + EVAL_BATCH] for i in range(0, len(share), EVAL_BATCH)]
    most = int(max(dist.gather(len(batches))))
    bar.reset(total=most)
    total = 0.0
    with torch.no_grad():
        for index in range(most):
            reason = stop()
            if reason is not None:
                bar.close()
                return None, reason
            if index < len(batches):
                total += float(window_nll(model, windows.batch(batches[index]).to(device)).sum())
            bar.update(1)
    bar.close()
    total, count = dist.sum([total, float(len(share))])
    return total / count, None


def checkpoint_to_resume(folder: Path) -> Checkpoint:
    if not has_checkpoint(folder):
        raise FitError(f"{folder}: no checkpoint to resume from (start without --resume)")
    return load_checkpoint(folder)


def check_fresh(out: Path, recipe: Recipe | None, change: dict | None) -> None:
    """A fresh run needs an empty --out and a recipe, and has nothing to change."""
    if has_checkpoint(out / CHECKPOINT_DIR) or (out / "model.safetensors").exists():
        raise FitError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    if recipe is None:
        raise FitError("a fresh run needs a recipe")
    if change:
        raise FitError("a recipe change changes a resumed run; add --resume")


def parent_of(init: str | os.PathLike | None, saved: Checkpoint | None, config: ModelConfig) -> Parent | None:
    """The weights a fresh run starts from. A resumed run keeps the parent it started from (its
    state records it; None here), and an --init that names other weights is refused."""
    parent = Parent.find(init) if init is not None else None
    if saved is not None:
        recorded = saved.state.get("parent")
        if parent is not None and (recorded is None or recorded["sha256"] != parent.sha256):
            raise FitError(f"--init {init} differs from the weights this run started from "
                           f"({recorded['path'] if recorded else 'random weights'}); a resumed run keeps its start")
        return None
    if parent is not None and parent.config != config:
        raise FitError(f"the recipe's model config differs from that of --init {parent.folder}; "
                       "a fine-tuning run trains the model it starts from")
    return parent


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
        init: str | os.PathLike | None = None,
    ):
        self.started = time.monotonic()
        self.out = Path(out)
        self.checkpoint_dir = self.out / CHECKPOINT_DIR
        self.limits, self.progress, self.amp = limits, progress, amp
        self.device = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = Distributed(self.device)
        self.report = report if self.dist.main else (lambda line: None)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        saved = None
        if resume:
            saved = checkpoint_to_resume(self.checkpoint_dir)
            self.recipe, changed_from = resumed_recipe(saved.state["recipe"], change, expect)
        else:
            check_fresh(self.out, recipe, change)
            self.recipe, changed_from = recipe, {}
        self.recipe.check()
        self.config = self.recipe.config()
        parent = parent_of(init, saved, self.config)
        self.data_folder = Path(data).resolve()
        self._load_data(saved)
        self._build_model(parent)
        self.state = RunState(
            recipe=asdict(self.recipe), model_config=self.config.to_dict(), data_folder=str(self.data_folder),
            data=self.data_fingerprint, world_size=self.dist.world, sampler_at_epoch_start=self.sampler.bit_generator.state,
            augment=[None] * self.dist.world, parent=parent.to_dict() if parent else None,
        )
        if saved is not None:
            self._restore(saved)
            self._record_change(changed_from)
        self.wall_before = self.state.wall_seconds  # spent by earlier processes of this run
        self.saved_at = self.status_at = time.monotonic()
        self.dirty = False  # steps made since the last checkpoint
        self.net: nn.Module = self.model
        if self.dist.active:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _load_data(self, saved: Checkpoint | None) -> None:
        """The train and test windows; under torchrun the first process reads (and fills the token
        cache) before the others read it."""
        self.train, self.test = self.dist.main_first(
            lambda: load_train_test(self.data_folder, self.recipe.test_ratio, self.recipe.seed, report=self.report)
        )
        self.data_fingerprint = {"train": self.train.fingerprint(), "test": self.test.fingerprint()}
        if saved is not None and saved.state["data"] != self.data_fingerprint:
            raise FitError(
                f"{self.data_folder}: not the data the checkpoint was trained on "
                f"(then {saved.state['data']}, now {self.data_fingerprint})"
            )
        self.eval_indices = evaluation_indices(self.test.windows, self.recipe.eval_windows, self.recipe.seed)

    def _build_model(self, parent: Parent | None) -> None:
        torch.manual_seed(self.recipe.seed)
        self.model = build_model(self.config)
        if parent is not None:
            parent.load_into(self.model)
        self.model.to(self.device)
        if self.dist.rank > 0:
            torch.manual_seed(self.recipe.seed + self.dist.rank)  # each process its own dropout masks
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=self.recipe.lr_at(0))
        self.sampler = np.random.default_rng([self.recipe.seed, SAMPLER_STREAM])
        self.augment = np.random.default_rng([self.recipe.seed, AUGMENT_STREAM, self.dist.rank])

    def _restore(self, saved: Checkpoint) -> None:
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        self.state = self.state.continued_from(saved.state)
        rank = self.dist.rank
        if saved.state["world_size"] != self.dist.world:
            self.report(
                f"note: checkpoint was written by {saved.state['world_size']} processes, now {self.dist.world}; "
                "the run continues but not bit-for-bit"
            )
            self.state.augment = [None] * self.dist.world
        if f"torch_cpu/rank{rank}" in saved.rng:
            torch.set_rng_state(saved.rng[f"torch_cpu/rank{rank}"])
        if self.device.type == "cuda" and f"torch_cuda/rank{rank}" in saved.rng:
            torch.cuda.set_rng_state(saved.rng[f"torch_cuda/rank{rank}"], self.device)
        if self.state.augment[rank] is not None:
            self.augment.bit_generator.state = self.state.augment[rank]
        self.sampler.bit_generator.state = self.state.sampler_at_epoch_start

    def _record_change(self, changed_from: dict) -> None:
        if not changed_from:
            return
        to = {key: getattr(self.recipe, key) for key in changed_from}
        self.state.recipe_changes.append({"step": self.state.step, "epoch": self.state.epoch, "from": changed_from, "to": to})
        self.report(f"recipe changed from step {self.state.step:,}: " + ", ".join(
            f"{key} {changed_from[key]!r} -> {value!r}" for key, value in to.items()))

    # --- checkpoints and stopping ----------------------------------------------------------------

    def save(self) -> None:
        """Checkpoint the current state (every process takes part; the first one writes)."""
        states = self.dist.gather({"augment": self.augment.bit_generator.state, "rng": rng_tensors(self.device)})
        self.dist.check_in_sync(self.model)
        if self.dist.main:
            rng = {f"{name}/rank{r}": t for r, item in enumerate(states) for name, t in item["rng"].items()}
            self.state.augment = [item["augment"] for item in states]
            self.state.wall_seconds = self.wall_seconds()
            save_checkpoint(
                self.checkpoint_dir,
                Checkpoint(self.model.state_dict(), self.optimizer.state_dict(), rng, self.state.to_dict()),
            )
        self.dist.barrier()
        self.saved_at = time.monotonic()
        self.dirty = False

    def checkpoint_due(self) -> bool:
        minutes = self.limits.checkpoint_minutes
        return self.dist.any(minutes is not None and time.monotonic() - self.saved_at >= minutes * 60)

    def wall_seconds(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    def stop_reason(self, stopper: StopRequest, evaluating: bool = False) -> str | None:
        """Why to stop before the next step, agreed by every process. An evaluation is not cut
        short for --max-steps: the steps it follows are already done."""
        reason = None
        if stopper.signal is not None:
            reason = "signal"
        elif self.limits.max_minutes is not None and time.monotonic() - self.started >= self.limits.max_minutes * 60:
            reason = "max_time"
        elif not evaluating and self.limits.max_steps is not None and self.state.step >= self.limits.max_steps:
            reason = "max_steps"
        if self.dist.any(reason is not None):
            return reason or "signal"
        return None

    def _stop_before_epoch(self, stopper: StopRequest) -> str | None:
        if self.state.since_best >= self.limits.patience and self.state.best_epoch is not None:
            return "patience"
        if self.state.epoch >= self.limits.max_epochs:
            return "max_epochs"
        return self.stop_reason(stopper)

    # --- training -------------------------------------------------------------------------------

    def run(self) -> FitResult:
        with StopRequest(self.report) as stopper:
            stop = self._loop(stopper)
        self.finish(stop)
        state = self.state
        return FitResult(self.out, stop, state.epoch, state.step, state.best_epoch, state.best_test_loss, list(state.history))

    def _loop(self, stopper: StopRequest) -> str:
        self.report(
            f"{self.config.kind}: {parameter_count(self.model):,} parameters on {self.device} x{self.dist.world}"
            + (f", from {self.state.parent['path']}" if self.state.parent else "")
            + f"; train {len(self.train.windows):,} windows ({len(self.train.files)} files"
            f"{f', {len(self.train.skipped)} skipped' if self.train.skipped else ''}), "
            f"test {len(self.eval_indices):,} of {len(self.test.windows):,} windows"
        )
        while True:
            reason = self._stop_before_epoch(stopper)
            if reason is not None:
                if self.dirty:
                    self.save()
                return reason
            reason = self._train_epoch(stopper)
            if reason is None:
                test_loss, reason = self.evaluate(stopper)
            if reason is not None:
                self.save()
                return reason
            self._end_epoch(test_loss)

    def _train_epoch(self, stopper: StopRequest) -> str | None:
        """The rest of the epoch under way; why it stopped early, or None when it ended."""
        recipe, state = self.recipe, self.state
        lr = recipe.lr_at(state.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # the sampler restarts from the epoch's first state, so a resumed epoch redraws the same windows
        self.sampler.bit_generator.state = state.sampler_at_epoch_start
        sample = epoch_sample(self.sampler, len(self.train.windows), recipe.epoch_size(len(self.train.windows)))
        steps = epoch_steps(sample, recipe.batch_size, self.dist.world)
        bar = self._bar(len(steps), f"epoch {state.epoch + 1}", state.batch_in_epoch)
        self.net.train()
        try:
            while state.batch_in_epoch < len(steps):
                reason = self.stop_reason(stopper)
                if reason is not None:
                    return reason
                self._train_step(steps[state.batch_in_epoch])
                if self.checkpoint_due():
                    self.save()
                bar.update(1)
                running = state.epoch_loss_sum / state.epoch_tokens
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}")
                if not self.progress and time.monotonic() - self.status_at >= STATUS_EVERY_S:
                    self.status_at = time.monotonic()
                    self.report(
                        f"epoch {state.epoch + 1}: step {state.batch_in_epoch}/{len(steps)}, running train loss {running:.4f}, "
                        f"{state.epoch_tokens / max(state.epoch_train_seconds, 1e-9):,.0f} tokens/s"
                    )
        finally:
            bar.close()
        return None

    def _train_step(self, windows: np.ndarray) -> None:
        began = time.monotonic()
        recipe = self.recipe
        mine = np.array_split(windows, self.dist.world)[self.dist.rank]
        batch = self.train.windows.batch(mine, self.augment if recipe.augment_transpose else None, recipe.transpose_max)
        batch = batch.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device, self.config.kind, self.amp):
            loss = window_loss(self.net, batch)
        loss.backward()
        self.optimizer.step()
        self.state.record_step(float(loss.detach()), batch.shape[0] * (batch.shape[1] - 1), time.monotonic() - began)
        self.dirty = True

    def _end_epoch(self, test_loss: float) -> None:
        """Log the epoch, keep its weights when they are the best so far, checkpoint."""
        state = self.state
        train_loss, tokens, seconds = self.dist.sum([state.epoch_loss_sum, float(state.epoch_tokens), state.epoch_train_seconds])
        record = {
            "epoch": state.epoch + 1,
            "train_loss": train_loss / tokens,
            "test_loss": test_loss,
            "lr": self.recipe.lr_at(state.epoch),
            "tokens_per_s": tokens / max(seconds / self.dist.world, 1e-9),
            "wall_time": self.wall_seconds(),
            "steps": state.step,
        }
        improved = state.record_epoch(record, test_loss)
        if improved and self.dist.main:
            save_weights(self.out, self.model, self.config, self.provenance("running"))
        state.start_next_epoch(self.sampler.bit_generator.state)
        self.save()
        if self.dist.main:
            write_log(self.out / LOG_FILE, state.history)
            plot_losses(self.out / PLOT_FILE, state.history, f"{self.config.kind} on {self.data_folder.name}")
        self.report(
            f"epoch {record['epoch']}: train {record['train_loss']:.4f}  test {test_loss:.4f}  lr {record['lr']:.2e}  "
            f"{record['tokens_per_s']:,.0f} tokens/s"
            + ("  (best)" if improved else f"  (best {state.best_test_loss:.4f} at epoch {state.best_epoch})")
        )

    def evaluate(self, stopper: StopRequest) -> tuple[float | None, str | None]:
        """(mean test NLL per token over the evaluation windows, None), or (None, why) when asked to
        stop midway (the checkpoint then resumes with this evaluation)."""
        self.model.eval()
        with autocast_for(self.device, self.config.kind, self.amp):
            return test_loss(
                self.model, self.test.windows, self.eval_indices, self.dist, self.device,
                lambda: self.stop_reason(stopper, evaluating=True), self._bar(0, f"test {self.state.epoch + 1}"),
            )

    def _bar(self, total: int, description: str, initial: int = 0):
        return progress_bar(total, description, initial, enabled=self.progress and self.dist.main)

    # --- the output -----------------------------------------------------------------------------

    def provenance(self, stop: str) -> dict:
        state = self.state
        return {
            "trained_by": "antiphon-train fit",
            **({"parent": state.parent} if state.parent else {}),
            "data_folder": str(self.data_folder),
            "data": self.data_fingerprint,
            "skipped_files": self.train.skipped + self.test.skipped,
            "recipe": asdict(self.recipe),
            "recipe_changes": state.recipe_changes,
            "epochs": state.epoch,
            "steps": state.step,
            "best_epoch": state.best_epoch,
            "best_epoch_steps": state.best_epoch_steps,
            "test_nll": state.best_test_loss,
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
        if self.dist.main and self.state.best_epoch is not None and (self.out / CONFIG_FILE).exists():
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
    init: str | os.PathLike | None = None,
) -> FitResult:
    """Train (or continue training) into `out`; see the module docstring. On resume the recipe comes
    from the checkpoint; `expect` (recipe field -> value) names values the caller asked for, and a
    mismatch is an error rather than a silent change of recipe. `change` (fields of CHANGEABLE ->
    value) deliberately changes the resumed run's recipe from its current step on, recorded in the
    checkpoint and the weights' provenance. `init` (a weights folder or a shipped name) starts a
    fresh run from those weights; `recipe` must then train their model (Recipe.fine_tune)."""
    return Run(data, out, recipe, limits or Limits(), resume, device, amp, progress, report, expect, change, init).run()


def describe_stop(result: FitResult) -> str:
    reasons = {
        "patience": "test loss stopped improving",
        "max_epochs": "reached --max-epochs",
        "max_steps": "reached --max-steps",
        "max_time": "reached --max-minutes/--max-hours",
        "signal": "stopped by a signal",
    }
    best = (
        f"best epoch {result.best_epoch} (test {result.best_test_loss:.4f}) in {result.out}"
        if result.best_epoch is not None
        else "no epoch finished yet, so no weights written"
    )
    return f"{reasons[result.stop]} after {result.step} steps, {result.epoch} epochs; {best}"
