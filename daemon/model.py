"""One place that knows both model kinds."""

from __future__ import annotations

from dataclasses import fields

from torch import nn

from daemon.lstm import LSTMConfig, LSTMModel
from daemon.transformer import TransformerConfig, TransformerModel

ModelConfig = LSTMConfig | TransformerConfig
CONFIGS: dict[str, type] = {"lstm": LSTMConfig, "transformer": TransformerConfig}
MODELS: dict[str, type] = {"lstm": LSTMModel, "transformer": TransformerModel}


def config_from_dict(data: dict) -> ModelConfig:
    """A config from its JSON form; raises ValueError naming the unknown kind or key."""
    kind = data.get("kind")
    if kind not in CONFIGS:
        raise ValueError(f"unknown model kind {kind!r} (expected one of {sorted(CONFIGS)})")
    cls = CONFIGS[kind]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {kind} config keys {unknown}")
    try:
        return cls(**data)
    except TypeError as error:
        raise ValueError(f"bad {kind} config: {error}") from None


def default_config(kind: str) -> ModelConfig:
    return config_from_dict({"kind": kind})


def build_model(config: ModelConfig) -> nn.Module:
    return MODELS[config.kind](config)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
