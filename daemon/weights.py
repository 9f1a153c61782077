"""Weights folders: model.safetensors plus config.json. Never pickle.

config.json = {"format": 1, "codec": CODEC_VERSION, "model": {...config...}, "provenance": {...}}.
Loading validates everything before building anything and names the file and the mismatch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from daemon.codec import CODEC_VERSION
from daemon.model import ModelConfig, build_model, config_from_dict

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class WeightsError(Exception):
    """A weights folder that cannot be used; the message names the file and what is wrong."""


@dataclass
class LoadedWeights:
    model: nn.Module
    config: ModelConfig
    meta: dict = field(default_factory=dict)
    folder: Path | None = None


def save_weights(
    folder: str | os.PathLike, model: nn.Module, config: ModelConfig, provenance: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a weights folder (atomically per file); returns its path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", dtype).contiguous() for name, t in model.state_dict().items()}
    temporary = folder / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(temporary), metadata={"format": str(FORMAT_VERSION), "kind": config.kind})
    # safetensors creates the file owner-only; weights are read by a service user too.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, folder / WEIGHTS_FILE)
    document = {"format": FORMAT_VERSION, "codec": CODEC_VERSION, "model": config.to_dict(), "provenance": provenance or {}}
    temporary = folder / (CONFIG_FILE + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, folder / CONFIG_FILE)
    return folder


def read_config(folder: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """The validated model config and the whole JSON document of a weights folder."""
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise WeightsError(f"{folder}: not a weights folder (no such directory)")
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing (a weights folder holds {CONFIG_FILE} and {WEIGHTS_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise WeightsError(f"{path}: no 'model' object")
    if document.get("format") != FORMAT_VERSION:
        raise WeightsError(f"{path}: format {document.get('format')!r}, this version reads format {FORMAT_VERSION}")
    if document.get("codec") != CODEC_VERSION:
        raise WeightsError(f"{path}: codec {document.get('codec')!r}, this version speaks {CODEC_VERSION!r}")
    try:
        config = config_from_dict(document["model"])
    except ValueError as error:
        raise WeightsError(f"{path}: {error}") from None
    return config, document


def load_weights(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedWeights:
    """Validate and load a weights folder into a model in eval mode on `device`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config, document = read_config(folder)
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from None
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path}: does not match a {config.kind} model: missing {missing}, unexpected {unexpected}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise WeightsError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
        if not tensor.is_floating_point():
            raise WeightsError(f"{path}: tensor {name} has dtype {tensor.dtype}, expected floating point")
    model.load_state_dict({name: t.float() for name, t in tensors.items()})
    model.to(device).eval()
    return LoadedWeights(model, config, document, Path(folder))
