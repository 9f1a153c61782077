"""The weights a fine-tuning run starts from (`--init`): found like the daemon finds weights (a
shipped name or a folder), and named in the new weights' provenance by path and content hash."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from daemon.model import ModelConfig
from daemon.paths import weights_folder
from daemon.weights import WEIGHTS_FILE, WeightsError, load_weights, read_config
from training.recipe import FitError


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Parent:
    folder: Path
    sha256: str  # of its model.safetensors
    config: ModelConfig

    @classmethod
    def find(cls, weights: str | os.PathLike) -> Parent:
        """The weights named by `weights` (a shipped name or a folder); raises FitError naming what is wrong."""
        folder = weights_folder(weights).resolve()
        try:
            config, _ = read_config(folder)
            sha256 = file_sha256(folder / WEIGHTS_FILE)
        except WeightsError as error:
            raise FitError(f"--init: {error}") from None
        except OSError as error:
            raise FitError(f"--init: {folder / WEIGHTS_FILE}: unreadable ({error.strerror or error})") from None
        return cls(folder, sha256, config)

    def to_dict(self) -> dict:
        return {"path": str(self.folder), "sha256": self.sha256, "kind": self.config.kind}

    def load_into(self, model: nn.Module) -> None:
        """Copy the parent's parameters into `model` (built from the same config)."""
        try:
            loaded = load_weights(self.folder, device="cpu")
        except WeightsError as error:
            raise FitError(f"--init: {error}") from None
        model.load_state_dict(loaded.model.state_dict())

    def check_compatible(self, model: str | None, model_config: dict | None) -> None:
        """A fine-tuning run trains the parent's model: a --model or --model-config that says
        otherwise is refused rather than silently ignored."""
        if model is not None and model != self.config.kind:
            raise FitError(f"--model {model} conflicts with --init {self.folder}, which holds {self.config.kind} weights "
                           "(a fine-tuning run trains the model it starts from; drop --model)")
        ours = self.config.to_dict()
        differing = {key: value for key, value in (model_config or {}).items() if ours.get(key) != value}
        if differing:
            raise FitError(
                "--model-config " + ", ".join(f"{key}={value!r}" for key, value in differing.items())
                + f" conflicts with --init {self.folder} (" + ", ".join(f"{key}={ours.get(key)!r}" for key in differing)
                + "); the model config comes from the weights"
            )
