"""Where a run stands: everything besides the tensors that an exact resume needs.

Saved as the checkpoint's state.json with one key per field, so a checkpoint written before a field
existed still loads (the field takes its default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

STATE_VERSION = 1
# Fields a resumed run keeps as this process has them rather than taking the checkpoint's:
# its recipe (the checkpoint's plus any --change-recipe) and its number of processes.
OWN_ON_RESUME = ("recipe", "world_size")


@dataclass
class RunState:
    recipe: dict
    model_config: dict
    data_folder: str
    data: dict  # fingerprint of the train and test windows; a resume on other data is refused
    world_size: int
    sampler_at_epoch_start: dict  # numpy bit generator state: a resumed epoch redraws the same windows
    augment: list  # per rank: the transposition generator's state, None until the first checkpoint
    parent: dict | None = None  # the weights a fine-tuning run started from: path, sha256, kind
    version: int = STATE_VERSION
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # steps done in the epoch under way
    step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_tokens: int = 0
    epoch_train_seconds: float = 0.0
    best_epoch: int | None = None
    best_test_loss: float | None = None
    since_best: int = 0
    history: list[dict] = field(default_factory=list)  # one record per epoch, as in train_log.jsonl
    recipe_changes: list[dict] = field(default_factory=list)  # each: step, epoch, values before and after
    wall_seconds: float = 0.0  # spent by this run's processes up to the last checkpoint

    def to_dict(self) -> dict:
        return asdict(self)

    def continued_from(self, saved: dict) -> RunState:
        """This state with the checkpoint's `saved` values, except the ones a resumed run keeps."""
        names = {f.name for f in fields(self)} - set(OWN_ON_RESUME)
        return replace(self, **{key: value for key, value in saved.items() if key in names})

    def start_next_epoch(self, sampler_state: dict) -> None:
        """Forget the epoch just ended; the next one draws from `sampler_state`."""
        self.batch_in_epoch = 0
        self.epoch_loss_sum, self.epoch_tokens, self.epoch_train_seconds = 0.0, 0, 0.0
        self.sampler_at_epoch_start = sampler_state

    def record_step(self, loss: float, tokens: int, seconds: float) -> None:
        self.epoch_loss_sum += loss * tokens
        self.epoch_tokens += tokens
        self.batch_in_epoch += 1
        self.step += 1
        self.epoch_train_seconds += seconds

    def record_epoch(self, record: dict, test_loss: float) -> bool:
        """Log a finished epoch; True when its test loss is the best so far."""
        self.history.append(record)
        self.epoch = record["epoch"]
        improved = self.best_test_loss is None or test_loss < self.best_test_loss
        if improved:
            self.best_epoch, self.best_test_loss, self.since_best = self.epoch, test_loss, 0
        else:
            self.since_best += 1
        return improved

    @property
    def best_epoch_steps(self) -> int | None:
        return next((r["steps"] for r in self.history if r["epoch"] == self.best_epoch), None)
