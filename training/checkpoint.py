"""Resumable training state on disk: tensors as safetensors, everything else as JSON. Never pickle.

Layout of a checkpoint folder:
    latest.json            {"name": "step-00000123"}, replaced atomically, names the valid state
    step-00000123/         one complete state, written under a temporary name and renamed when whole
        model.safetensors      model parameters and buffers
        optimizer.safetensors  the optimizer's per-parameter tensors
        rng.safetensors        torch RNG states (uint8 tensors), per rank
        state.json             optimizer hyper-parameters, numpy RNG states, epoch, step, best, history...
A kill at any moment leaves latest.json naming a complete state.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

LATEST = "latest.json"
STATE_FILE = "state.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict[str, torch.Tensor]
    state: dict


def optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a torch optimizer state_dict into named tensors and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain}


def optimizer_from_files(tensors: dict[str, torch.Tensor], document: dict) -> dict:
    """Inverse of optimizer_to_files."""
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, entry in document["plain_state"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [dict(group, betas=tuple(group["betas"])) if "betas" in group else group for group in document["param_groups"]]
    return {"state": state, "param_groups": groups}


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(folder: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write a complete state and make it the latest, atomically; older states are removed."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(checkpoint.state['step']):08d}-epoch-{int(checkpoint.state['epoch']):04d}"
    temporary = folder / f".tmp-{name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    model = {k: v.detach().cpu().contiguous().clone() for k, v in checkpoint.model.items()}
    optimizer_tensors, optimizer_plain = optimizer_to_files(checkpoint.optimizer)
    save_file(model, str(temporary / "model.safetensors"))
    save_file(optimizer_tensors, str(temporary / "optimizer.safetensors"))
    save_file({k: v.contiguous() for k, v in checkpoint.rng.items()}, str(temporary / "rng.safetensors"))
    document = dict(checkpoint.state, optimizer=optimizer_plain)
    (temporary / STATE_FILE).write_text(json.dumps(document, indent=1) + "\n")
    for path in temporary.iterdir():
        _fsync_file(path)
    final = folder / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(temporary, final)
    pointer = folder / (LATEST + ".tmp")
    pointer.write_text(json.dumps({"name": name}) + "\n")
    _fsync_file(pointer)
    os.replace(pointer, folder / LATEST)
    _fsync_dir(folder)
    for stale in folder.iterdir():
        if stale.is_dir() and stale.name != name:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def has_checkpoint(folder: str | os.PathLike) -> bool:
    return (Path(folder) / LATEST).is_file()


def load_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """The latest complete state of a checkpoint folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    pointer = folder / LATEST
    try:
        name = json.loads(pointer.read_text())["name"]
    except FileNotFoundError:
        raise CheckpointError(f"{pointer}: missing, so {folder} holds no checkpoint to resume from") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{pointer}: unreadable ({error})") from None
    state_folder = folder / name
    try:
        document = json.loads((state_folder / STATE_FILE).read_text())
        model = load_file(str(state_folder / "model.safetensors"))
        optimizer_tensors = load_file(str(state_folder / "optimizer.safetensors"))
        rng = load_file(str(state_folder / "rng.safetensors"))
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise CheckpointError(f"{state_folder}: incomplete or unreadable checkpoint ({error})") from None
    optimizer = optimizer_from_files(optimizer_tensors, document.pop("optimizer"))
    return Checkpoint(model, optimizer, rng, document)
