"""Weights prepared once for the torch decode step, shared by both models' step(), and the
choice between that step and the native one (native.py, the default where it builds).

A decode step multiplies one row by every weight matrix, so it is bound by reading the weights
(~17 MB per token for either model, from L3). On the 2-core dev VM, one thread, minimum over
interleaved repeats, all 32 matrices of the Transformer (16.8 MB), in one run:
  F.linear 1.36 ms, addmm on a pre-transposed copy 1.09 ms, torch.sum over the same bytes 1.14 ms;
  torch's own fp16 / bf16 F.linear 1.36 / 1.55 ms (no gain), addmm in fp16 ~10x slower.
and in another (a busier moment): addmm 2.43 ms, fbgemm fp16 weights 1.32 ms, fbgemm int8
weights 0.90 ms, torch.ao dynamic int8 Linear 3.24 ms (its per-call overhead dominates).
So "fp32" (the default, exact) is addmm on pre-transposed weights; "fp16" and "int8" are explicit
CPU opt-ins through fbgemm (relative error per matrix ~2e-4 and ~1e-2); bench/decode.py --nll
prints what they cost in NLL on the reference test files. torch marks these fbgemm_* functions
deprecated (warning once per process, silenced here); they are still the only fp16/int8
matrix-vector kernels in torch 2.13 that beat fp32 on this CPU.
Later measurements showed the torch step's ~230 op dispatches (3-8 us each on this VM), not
its matrix reads, dominate it: hence the native kernel, one C call per step.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

log = logging.getLogger("antiphon.decoding")

PRECISIONS = ("fp32", "fp16", "int8")
# Which code runs a decode step: "torch" (the models' step(), any device and precision) or
# "native" (daemon/native.py: the whole step as one C call, CPU, fp32/fp16). Both compute the
# same function; on the AVX2 dev VM, fp16, the native Transformer step is ~2x faster (op
# dispatch, not arithmetic, dominated the torch step). "auto" = native where it builds.
KERNELS = ("auto", "native", "torch")

Prepared = TypeVar("Prepared")


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
    NLL on test files is within +-0.0003 of fp32 and whose 4.3 MB of weights stay in L3 with
    the cache (fp16 weights and cache overflow the VM's effective L3: 0.77 against 2.7 ms per
    Transformer step). Torch: fp16 on a CPU with fbgemm (x86-64), fp32 elsewhere (GPUs, ARM)."""
    if kernel == "native":
        return "int8"
    if device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines:
        return "fp16"
    return "fp32"


def resolve_kernel(kernel: str, device: torch.device, config: Any = None) -> str:
    """"auto" -> "native" on a CPU where the native kernel builds (and runs a model of this
    config, when given), else "torch"; "native" where it cannot run raises ValueError saying why."""
    from daemon.native import native_unavailable, unsupported

    if kernel not in KERNELS:
        raise ValueError(f"unknown decode kernel {kernel!r} (expected one of {list(KERNELS)})")
    if kernel == "torch":
        return kernel
    if device.type != "cpu":
        reason = f"the model is on {device}"
    else:
        reason = native_unavailable() or (unsupported(config) if config is not None else None)
    if reason is None:
        return "native"
    if kernel == "native":
        raise ValueError(f"decode kernel 'native' cannot run: {reason}")
    log.info("decode kernel torch: native not used (%s)", reason)
    return "torch"


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


def cached(model: nn.Module, precision: str, build: Callable[[str], Prepared]) -> Prepared:
    """build(precision), reused while the parameters are unchanged: the key holds each parameter's
    storage and version counter, so an optimizer step, load_state_dict or .to() rebuilds it
    (parameters created under inference_mode have no version counter: only their storage counts)."""
    key = tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in model.parameters())
    prepared = model.__dict__.setdefault("_decode_cache", {})
    if precision not in prepared or prepared[precision][0] != key:
        with torch.no_grad():
            prepared[precision] = (key, build(precision))
    return prepared[precision][1]
