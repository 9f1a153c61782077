"""What a decode step reads, declared once per model, and the torch step's preparation of it.

Each model declares its decode weights in one DecodeLayout: the tensors, in order, each a
Linear, a Norm or a Table, and the config sizes the step needs. The torch step (torch_decoder)
and the native one (native.native_decoder, whose C code reads the same order through names
generated from the layout) are both prepared from it.

A decode step multiplies one row by every weight matrix, so it reads every weight once per
token. "fp32" (the default, exact) is addmm on pre-transposed weights; "fp16" and "int8" are
explicit CPU opt-ins that read a half / a quarter of the bytes, through fbgemm in the torch step
(relative error per matrix ~2e-4 and ~1e-2). bench/decode.py prints what each costs per token
for either step and, with --nll, in NLL on the reference test files. torch marks these fbgemm_*
functions deprecated (warning once per process, silenced here); they are still the only
fp16/int8 matrix-vector kernels in torch 2.13 that beat fp32 on an x86 CPU.
"""

from __future__ import annotations

import functools
import warnings
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

PRECISIONS = ("fp32", "fp16", "int8")
# How many tokens an engine can take back (Engine.rollback): the decode states of the last this
# many positions are kept. Accompaniment rolls back at most its lookahead (a few sixteenths,
# a few tokens each); bench/rollback.py prints what a rollback costs.
ROLLBACK_TOKENS = 64


class DecodeLinear:
    """x [1, in] -> x W^T + b [1, out], exact fp32: addmm on a pre-transposed weight."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight_t = weight.detach().t().contiguous()
        self.bias = bias.detach().clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_t)


class Fp16DecodeLinear:
    """The same with the weight stored as fp16 by fbgemm (CPU only; activations stay fp32)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.packed = without_deprecation_warning(torch.fbgemm_pack_gemm_matrix_fp16, weight.detach().float().contiguous())
        self.bias = bias.detach().float().clone()
        without_deprecation_warning(self, weight.new_zeros(1, weight.shape[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fbgemm_linear_fp16_weight_fp32_activation(x, self.packed, self.bias)


class Int8DecodeLinear:
    """The same with the weight quantized to int8 by fbgemm (one scale per matrix; the row x is
    quantized on the fly): a quarter of the bytes, ~1% relative error per matrix."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight = weight.detach().float().contiguous()  # fbgemm reads only its shape
        self.quantized, self.column_offsets, self.scale, self.zero_point = without_deprecation_warning(
            torch.fbgemm_linear_quantize_weight, self.weight
        )
        self.packed = without_deprecation_warning(torch.fbgemm_pack_quantized_matrix, self.quantized)
        self.bias = bias.detach().float().clone()
        without_deprecation_warning(self, weight.new_zeros(1, weight.shape[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fbgemm_linear_int8_weight_fp32_activation(
            x, self.weight, self.packed, self.column_offsets, self.scale, self.zero_point, self.bias
        )


LINEARS = {"fp32": DecodeLinear, "fp16": Fp16DecodeLinear, "int8": Int8DecodeLinear}


def decode_linear(weight: torch.Tensor, bias: torch.Tensor, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    check_precision(precision, weight.device)
    return LINEARS[precision](weight, bias)


def automatic_precision(device: torch.device, kernel: str) -> str:
    """The precision "auto" means for a resolved kernel. Native: int8 (one scale per row), whose
    NLL cost and speed against fp16 bench/decode.py --nll prints (its 4.3 MB of Transformer
    weights stay in L3 with the cache, where fp16 weights and cache may not). Torch: fp16 on a
    CPU with fbgemm (x86-64), fp32 elsewhere (GPUs, ARM)."""
    if kernel == "native":
        return "int8"
    if device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines:
        return "fp16"
    return "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown decode precision {precision!r} (expected one of {list(PRECISIONS)})")
    if precision != "fp32" and device.type != "cpu":
        raise ValueError(f"decode precision {precision!r} is a CPU option (fbgemm); the model is on {device}")


def without_deprecation_warning(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args) without torch's once-per-process fbgemm deprecation warning (see above)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*fbgemm.* is deprecated", category=UserWarning)
        return function(*args)


# The layout ------------------------------------------------------------------------------
# An entry's `get` reads its tensors from the model: get(model) for a model-wide entry,
# get(model, layer_index) for a per-layer one. Left out, it is the module of the entry's name
# (model.<name>, or model.layers[i].<name>).


@dataclass(frozen=True)
class Linear:
    """y = x W^T + b. Torch step: a DecodeLinear of the engine's precision. C step: `slots`
    table entries, weight (fp32/fp16/int8 [out, in]), per-row scale (int8 only, else NULL), bias."""

    name: str
    get: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    slots: ClassVar[tuple[str, ...]] = ("weight", "scale", "bias")


@dataclass(frozen=True)
class Norm:
    """A LayerNorm's (weight, bias). Torch step: the pair for F.layer_norm. C step: two entries."""

    name: str
    get: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    slots: ClassVar[tuple[str, ...]] = ("weight", "bias")


@dataclass(frozen=True)
class Table:
    """A tensor read as it is (an embedding, a position table): one entry, fp32. `native`
    re-lays it out for the C step where it reads it in another order than torch's step."""

    name: str
    get: Callable[..., torch.Tensor] | None = None
    native: Callable[[torch.Tensor], torch.Tensor] | None = None
    slots: ClassVar[tuple[str, ...]] = ("table",)


Entry = Linear | Norm | Table


@dataclass(frozen=True)
class DecodeLayout:
    """A model's decode weights, in the order the C step's table holds them: the model-wide
    entries, then the per-layer entries once per layer (config.num_layers); and the config
    sizes the C step reads (its <kind>_dims struct, then the weight format)."""

    kind: str
    dims: tuple[str, ...]
    model: tuple[Entry, ...]
    layer: tuple[Entry, ...]

    def tensors(self, model: nn.Module) -> tuple[list[tuple[Entry, Any]], list[list[tuple[Entry, Any]]]]:
        """([(entry, what get returns)] model-wide, the same per layer), read from `model`."""
        def read(entry: Entry, *where: Any) -> Any:
            if entry.get is not None:
                return entry.get(model, *where)
            module = getattr(model.layers[where[0]] if where else model, entry.name)
            return module.weight if isinstance(entry, Table) else (module.weight, module.bias)

        return ([(entry, read(entry)) for entry in self.model],
                [[(entry, read(entry, index)) for entry in self.layer] for index in range(model.config.num_layers)])

    @functools.cached_property
    def torch_types(self) -> tuple[type, type]:
        """The named tuples the torch step reads: model-wide entries plus `layers`, and one layer."""
        return (namedtuple(f"{self.kind.title()}DecodeWeights", [e.name for e in self.model] + ["layers"]),
                namedtuple(f"{self.kind.title()}DecodeLayer", [e.name for e in self.layer]))


class DecodableModel(Protocol):
    """What the engine needs of a model (TransformerModel, LSTMModel)."""

    config: Any
    DECODE_LAYOUT: ClassVar[DecodeLayout]

    def init_state(self, device: torch.device, dtype: torch.dtype) -> Any: ...
    def prefill(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...
    def decode_step(self, weights: Any, token: int, state: Any) -> tuple[torch.Tensor, Any]: ...


@runtime_checkable
class Rewindable(Protocol):
    """A decode state the step updates in place (the Transformer's KVCache): rolling back rewinds it."""

    def rewind(self, position: int) -> Any: ...


def rewound(state: Any, position: int) -> Any:
    """The state after `position` tokens, from the one the step returned then: a state updated
    in place since is rewound; any other (the LSTM's (h, c): new tensors each step, never
    written to again) is still as it was."""
    return state.rewind(position) if isinstance(state, Rewindable) else state


class Decoder(NamedTuple):
    """A prepared decode step: step(token, state) -> (logits [vocab], state), with `token` an int
    inside the vocabulary, and new_state() the empty state prefill and step start from."""

    step: Callable[[int, Any], tuple[torch.Tensor, Any]]
    new_state: Callable[[], Any]


def torch_weights(model: DecodableModel, precision: str) -> Any:
    """The model's decode weights as its torch step reads them, in `precision`."""
    layout = model.DECODE_LAYOUT

    def prepared(entry: Entry, value: Any) -> Any:
        if isinstance(entry, Linear):
            return decode_linear(*value, precision)
        # Copies: the step keeps the weights it was prepared with (DecodeLinears copy theirs).
        if isinstance(entry, Norm):
            return tuple(part.detach().clone() for part in value)
        return value.detach().clone()

    model_entries, layers = layout.tensors(model)
    weights_type, layer_type = layout.torch_types
    return weights_type(*(prepared(e, v) for e, v in model_entries),
                        [layer_type(*(prepared(e, v) for e, v in layer)) for layer in layers])


def torch_decoder(model: DecodableModel, precision: str) -> Decoder:
    """The torch step on the model's current weights (prepared here, once)."""
    with torch.no_grad():
        weights = torch_weights(model, precision)
    parameter = next(model.parameters())
    return Decoder(functools.partial(model.decode_step, weights),
                   functools.partial(model.init_state, parameter.device, parameter.dtype))
