"""Weights folders: model.safetensors plus config.json. Never pickle.

config.json = {"format": 1, "codec": CODEC_VERSION, "model": {...config...}, "provenance": {...}}.
Loading validates everything before filling anything and names the file and the mismatch in one
line: the config's types and ranges and the codec's vocabulary, then the tensors' names, shapes
and dtypes from the safetensors header (read without loading a tensor) against the model the
config describes, built without initialising its parameters (an oversized config costs address
space, not memory).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from daemon.codec import CODEC_VERSION, VOCAB_SIZE
from daemon.model import ModelConfig, build_model, config_from_dict

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Far above any model this project trains: a typo or a hostile config is refused instead of
# building a model of terabytes.
MAX_WIDTH = 1 << 16
MAX_LAYERS = 256
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
# nn.init's fillers: skipped while building a model whose parameters the file then fills.
INIT_FILLERS = {"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                "xavier_uniform_", "xavier_normal_", "orthogonal_"}


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


def _unreadable(path: object, error: OSError | ValueError) -> WeightsError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return WeightsError(f"{str(path)[:300]}: cannot be read ({reason})")


def read_config(folder: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """The validated model config and the whole JSON document of a weights folder."""
    path = Path(folder) / CONFIG_FILE
    try:
        if not Path(folder).is_dir():
            raise WeightsError(f"{folder}: not a weights folder (no such directory)")
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing (a weights folder holds {CONFIG_FILE} and {WEIGHTS_FILE})") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: a folder, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise WeightsError(f"{path}: not valid JSON (nested too deeply)") from None
    except (OSError, ValueError) as error:  # permission denied, a name too long, a NUL byte
        raise _unreadable(folder, error) from None
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
    _check_config(config, path)
    return config, document


def _check_config(config: ModelConfig, path: Path) -> None:
    """Every size a whole number in range, dropout a probability, the codec's vocabulary."""
    for spec in fields(config):
        value, default = getattr(config, spec.name), spec.default
        if spec.name == "kind":
            continue
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise WeightsError(f"{path}: model.{spec.name} has no check (a setting this version does not know)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(default, int) and not isinstance(value, int)):
            wanted = "a whole number" if isinstance(default, int) else "a number"
            raise WeightsError(f"{path}: model.{spec.name} = {value!r:.40}, expected {wanted}")
        if spec.name == "vocab_size" and value != VOCAB_SIZE:
            raise WeightsError(f"{path}: model.vocab_size = {value}, the codec has {VOCAB_SIZE} tokens")
        if isinstance(default, float):
            if not 0.0 <= value < 1.0:
                raise WeightsError(f"{path}: model.{spec.name} = {value}, expected 0 <= value < 1")
            continue
        low, high = (0 if spec.name == "max_distance" else 1), (MAX_LAYERS if spec.name == "num_layers" else MAX_WIDTH)
        if not low <= value <= high:
            raise WeightsError(f"{path}: model.{spec.name} = {value}, expected {low}..{high}")
    heads = getattr(config, "num_heads", None)
    if heads is not None and config.d_model % heads:
        raise WeightsError(f"{path}: model.d_model = {config.d_model} is not a multiple of num_heads = {heads}")


class _Unfilled(TorchFunctionMode):
    """Builds a model without running nn.init's fillers: its memory stays untouched until the
    weights file fills it (and a model refused meanwhile never becomes resident)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in INIT_FILLERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) from the safetensors header; no tensor is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                    for name in handle.keys()}
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: a folder, not a file") from None
    except PermissionError as error:
        raise _unreadable(path, error) from None
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from None


def _unfilled_model(config: ModelConfig, header: dict[str, tuple[tuple[int, ...], str]], path: Path) -> nn.Module:
    """The config's model, its parameters unfilled, once its tensors match the header exactly."""
    try:
        with _Unfilled():
            model = build_model(config)
    except RuntimeError as error:  # the address space for it cannot be had
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise WeightsError(f"{path}: the config describes a model too large to build ({reason})") from None
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path}: does not match a {config.kind} model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, (shape, dtype) in header.items():
        if shape != expected[name]:
            raise WeightsError(f"{path}: tensor {name} has shape {shape}, the config needs {expected[name]}")
        if dtype not in FLOAT_DTYPES:
            raise WeightsError(f"{path}: tensor {name} has dtype {dtype}, expected floating point")
    return model


def check_weights_folder(folder: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """Validate a weights folder completely without loading a tensor; raises WeightsError."""
    config, document = read_config(folder)
    path = Path(folder) / WEIGHTS_FILE
    _unfilled_model(config, _header(path), path)
    return config, document


def load_weights(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedWeights:
    """Validate and load a weights folder into a model in eval mode on `device`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config, document = read_config(folder)
    path = Path(folder) / WEIGHTS_FILE
    model = _unfilled_model(config, _header(path), path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from None
    model.load_state_dict({name: t.float() for name, t in tensors.items()})
    model.to(device).eval()
    return LoadedWeights(model, config, document, Path(folder))
