"""What fixes a run's trajectory (the recipe) and when it stops (the limits).

Two starting recipes: the paper's (Section 5.2) for a run from random weights, and a fine-tuning one
for a run that starts from trained weights (`--init`) on a small folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.model import ModelConfig, config_from_dict, default_config

PAPER_SCHEDULES = {
    "lstm": {"lr": 5e-4, "lr_decay": 0.8, "lr_floor": 5e-5},
    "transformer": {"lr": 1e-3, "lr_decay": 1.0, "lr_floor": 0.0},
}
# Fine-tuning a few dozen files for minutes: a constant lr (half the paper's Transformer lr, the
# LSTM's starting lr; chosen, not swept: weights/README.md has what it gives), transposition on (a
# small folder covers few keys, and it helped the shipped runs once they overfitted), and a test
# every 20 steps of 8 windows on a fixed 256 windows so that the best point of a short run is kept.
FINE_TUNE = {"lr": 5e-4, "lr_decay": 1.0, "lr_floor": 0.0, "augment_transpose": True, "transpose_max": 6,
             "epoch_windows": 160, "eval_windows": 256}


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
    epoch_windows: int = 0  # > 0: an epoch is this many windows, whatever the folder's size (overrides the fraction)
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

    @classmethod
    def fine_tune(cls, config: ModelConfig, **changes) -> Recipe:
        """The fine-tuning recipe for weights of `config`, with `changes` (None values ignored)."""
        values = dict(FINE_TUNE, model=config.kind, model_config=config.to_dict())
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of the epoch after `epoch` completed ones: max(floor, lr * decay**epoch)."""
        return max(self.lr_floor, self.lr * self.lr_decay**epoch)

    def epoch_size(self, windows: int) -> int:
        """Windows drawn per epoch from `windows` training windows (at least one, at most all)."""
        count = self.epoch_windows if self.epoch_windows > 0 else round(self.epoch_fraction * windows)
        return min(windows, max(1, count))

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
        if self.epoch_windows < 0:
            raise FitError(f"epoch windows {self.epoch_windows} must be 0 (use the fraction) or more")
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


def resumed_recipe(saved: dict, change: dict | None, expect: dict | None) -> tuple[Recipe, dict]:
    """(the recipe a resumed run goes on with, the changed fields' values before the change).

    `saved` is the checkpoint's recipe; `change` (fields of CHANGEABLE -> value) replaces some of it;
    `expect` (field -> value) names values the caller asked for, and a mismatch is an error."""
    recipe = Recipe(**saved)
    change = {k: v for k, v in (change or {}).items() if v is not None and getattr(recipe, k) != v}
    refused = sorted(set(change) - set(CHANGEABLE))
    if refused:
        raise FitError(f"{', '.join(refused)} cannot change on resume (only {', '.join(CHANGEABLE)} can)")
    changed_from = {key: getattr(recipe, key) for key in change}
    recipe = Recipe(**{**saved, **change})
    for key, value in (expect or {}).items():
        if value is not None and getattr(recipe, key) != value:
            raise FitError(
                f"{key} {value!r} differs from the checkpoint's {getattr(recipe, key)!r}; "
                "a resumed run keeps its recipe (only the limits, device and threads may change)"
            )
    return recipe, changed_from


@dataclass
class Limits:
    """When to stop; free to change on resume."""

    max_epochs: int = 100
    patience: int = 3
    max_steps: int | None = None  # optimizer steps of the whole run, resumes included
    max_minutes: float | None = None  # wall time of this process
    checkpoint_minutes: float | None = 10.0  # also checkpoint mid-epoch this often: a hard kill loses at most that
