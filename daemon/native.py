"""The decode step of both models as one C call (native_decode.c), built for this machine.

The C source is compiled on first use with the system C compiler (`$CC` or `cc`,
-O3 -march=native) into a cache folder ($CACHE_DIRECTORY under systemd, else
$XDG_CACHE_HOME/antiphon or ~/.cache/antiphon), keyed by the source, the compiler and the CPU,
so a shared home never hands one CPU's build to another. It needs x86-64 with AVX2, FMA and
F16C; where it cannot be built, `native_unavailable()` says why and the engine keeps the torch
step (decoding.KERNELS "auto").

Steps are plain functions of (token, state) like the models' own step(), on the same states:
the Transformer's KVCache (same layouts) and the LSTM's (h, c), so prefill stays torch's.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from daemon.paths import cache_folder

SOURCE = Path(__file__).with_name("native_decode.c")
ABI_VERSION = 4  # native_decode.c's ABI_VERSION
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
FORMATS = {"fp32": 0, "fp16": 1, "int8": 2}
MAX_WIDTH = 4096  # native_decode.c's MAX_WIDTH  # native_decode.c's weight formats, by precision


class NativeUnavailable(RuntimeError):
    """The native kernel cannot be built or loaded here; the message says why."""


def native_unavailable() -> str | None:
    """Why the native kernel cannot run here, or None when it can."""
    outcome = _load()
    return str(outcome) if isinstance(outcome, NativeUnavailable) else None


def library() -> ctypes.CDLL:
    """The built kernel (built once per machine, loaded once per process)."""
    outcome = _load()
    if isinstance(outcome, NativeUnavailable):
        raise NativeUnavailable(str(outcome))
    return outcome


@functools.cache
def _load() -> ctypes.CDLL | NativeUnavailable:
    """The kernel or why not, found once per process (a failed build is not retried per engine)."""
    try:
        return _build_and_load()
    except NativeUnavailable as error:
        return error


def _build_and_load() -> ctypes.CDLL:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise NativeUnavailable(f"native decode is written for x86-64 (AVX2/FMA/F16C); this is {platform.machine()}")
    if missing_cpu_features():
        raise NativeUnavailable(f"this CPU lacks {'/'.join(missing_cpu_features())}, which native decode needs")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise NativeUnavailable("no C compiler on PATH (cc, gcc or $CC) to build the native decode kernel")
    path = _cache_folder() / f"native_decode-{_build_key(compiler)}.so"
    if not path.exists():
        _build(compiler, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise NativeUnavailable(f"cannot load the native decode kernel {path}: {error}") from None
    if lib.antiphon_native_abi() != ABI_VERSION:
        raise NativeUnavailable(f"{path} has ABI {lib.antiphon_native_abi()}, expected {ABI_VERSION}")
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    lib.transformer_step.argtypes = [pointer] * 5 + [integer] * 3 + [pointer]
    lib.transformer_step.restype = None
    lib.lstm_step.argtypes = [pointer] * 5 + [integer, pointer]
    lib.lstm_step.restype = None
    lib.transformer_scratch_size.argtypes = lib.lstm_scratch_size.argtypes = [pointer]
    return lib


def _cache_folder() -> Path:
    try:
        return cache_folder()
    except OSError as error:
        raise NativeUnavailable(f"the native decode kernel has {error}") from None


def _build_key(compiler: str) -> str:
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise NativeUnavailable(f"C compiler {compiler!r} does not run: {error}") from None
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (version, " ".join(FLAGS), _cpu_flags()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def missing_cpu_features() -> list[str]:
    """Which of AVX2, FMA and F16C /proc/cpuinfo does not list (none where it cannot be read:
    the compiler's #error then says it)."""
    flags = _cpu_flags().split()
    if not flags or not flags[0].startswith("flags"):
        return []
    return [feature.upper() for feature in ("avx2", "fma", "f16c") if feature not in flags]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: str, path: Path) -> None:
    # Built under a temporary name and renamed: processes starting together never load half a file.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    command = [compiler, *FLAGS, "-o", str(partial), str(SOURCE), "-lm"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as error:
        raise NativeUnavailable(f"building the native decode kernel failed: {error}") from None
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        detail = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip()[-300:])
        raise NativeUnavailable(f"building the native decode kernel failed ({' '.join(command)}): {detail}")
    os.replace(partial, path)


def _linear(weight: torch.Tensor, bias: torch.Tensor, precision: str) -> list[torch.Tensor | None]:
    """The three table entries of a linear: weight, per-row scale (int8 only) and bias."""
    weight = weight.detach().to("cpu", torch.float32)
    if precision == "int8":
        # One scale per output row (fbgemm's int8 in the torch step has one per matrix).
        scale = weight.abs().amax(1).clamp(min=1e-12) / 127
        quantized = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        return [quantized.contiguous(), scale.contiguous(), _vector(bias)]
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return [weight.to(dtype).contiguous(), None, _vector(bias)]


def _vector(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32).contiguous()


def unsupported(config) -> str | None:
    """Why the native step cannot run a model of this config (the C code vectorises by 8), or None."""
    if config.kind == "transformer":
        widths = {"d_model": config.d_model, "head_dim": config.head_dim, "d_ff": config.d_ff}
        if config.head_dim > 32:
            return f"the native transformer step handles head_dim up to 32; got {config.head_dim}"
    else:
        widths = {"embed_dim": config.embed_dim, "hidden": config.hidden_size, "fc1": config.fc1, "fc2": config.fc2}
    odd = {name: width for name, width in widths.items() if width % 8}
    if odd:
        return f"the native {config.kind} step needs widths that are multiples of 8; got {odd}"
    if max(widths.values()) > MAX_WIDTH // 2:  # an LSTM cell's input is [x, h]
        return f"the native {config.kind} step handles widths up to {MAX_WIDTH // 2}; got {widths}"
    return None


def _require_supported(config) -> None:
    reason = unsupported(config)
    if reason:
        raise NativeUnavailable(reason)


class _Step:
    """Owns the prepared tensors and the pointer table the C step reads."""

    def __init__(self, dims: list[int], tensors: list[torch.Tensor | None], scratch_size: str) -> None:
        self.lib = library()
        self.tensors = tensors  # kept alive: the table below points into them
        self.dims = (ctypes.c_int * len(dims))(*dims)
        self.table = (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr() for t in tensors))
        self.scratch_size = getattr(self.lib, scratch_size)(self.dims)
        self.vocab = dims[-2]  # both dims lists end with (vocab size, weight format)

    def checked(self, token: torch.Tensor | int) -> int:
        """The token as an int; one outside the vocabulary would make the C code read out of bounds."""
        token = int(token)
        if not 0 <= token < self.vocab:
            raise IndexError(f"token {token} is outside the vocabulary (0..{self.vocab - 1})")
        return token


class TransformerStep(_Step):
    """step(token, KVCache) -> logits [vocab], for a TransformerModel's weights in fp32, fp16 or int8."""

    def __init__(self, model: torch.nn.Module, precision: str) -> None:
        from daemon.transformer import rotated_relative

        config = model.config
        _require_supported(config)
        tensors = [_vector(model.embed.weight), *_linear(model.head.weight, model.head.bias, precision)]
        for layer in model.layers:
            qkv_weight, qkv_bias = layer.scaled_qkv()
            tensors += [
                *_linear(qkv_weight, qkv_bias, precision),
                _vector(rotated_relative(layer.relative.detach(), config.context).t()),
                *_linear(layer.proj.weight, layer.proj.bias, precision),
                _vector(layer.norm1.weight), _vector(layer.norm1.bias),
                *_linear(layer.ff1.weight, layer.ff1.bias, precision),
                *_linear(layer.ff2.weight, layer.ff2.bias, precision),
                _vector(layer.norm2.weight), _vector(layer.norm2.bias),
            ]
        dims = [config.d_model, config.num_heads, config.head_dim, config.d_ff, config.num_layers,
                config.context, config.vocab_size, FORMATS[precision]]
        super().__init__(dims, tensors, "transformer_scratch_size")
        # The cache is fp16 unless the weights are fp32: it is a third of the bytes a fp16 step
        # reads at a full context, and what a step reads should stay in L3 (README, Benchmarks).
        self.cache_dtype = torch.float32 if precision == "fp32" else torch.float16

    def __call__(self, token: torch.Tensor | int, state) -> torch.Tensor:
        token = self.checked(token)  # before the state moves on
        slot, used = state.advance()
        if state.native_tables is None:
            state.native_tables = (
                (ctypes.c_void_p * len(state.keys))(*(k.data_ptr() for k in state.keys)),
                (ctypes.c_void_p * len(state.values))(*(v.data_ptr() for v in state.values)),
            )
        keys, values = state.native_tables
        scratch, logits = torch.empty(self.scratch_size), torch.empty(self.vocab)
        self.lib.transformer_step(self.dims, self.table, keys, values, scratch.data_ptr(), token, slot, used,
                                  logits.data_ptr())
        return logits


class LSTMStep(_Step):
    """step(token, (h, c)) -> (logits [vocab], (h, c)), for an LSTMModel's weights in fp32, fp16 or int8.
    The state it returns is new; the one passed in is left as it was."""

    def __init__(self, model: torch.nn.Module, precision: str) -> None:
        config = model.config
        _require_supported(config)
        tensors = [
            _vector(model.embed.weight),
            *_linear(model.fc1.weight, model.fc1.bias, precision),
            _vector(model.norm1.weight), _vector(model.norm1.bias),
            *_linear(model.fc2.weight, model.fc2.bias, precision),
            _vector(model.norm2.weight), _vector(model.norm2.bias),
            *_linear(model.head.weight, model.head.bias, precision),
        ]
        for layer in range(config.num_layers):
            tensors += _linear(*model.cell_matrix(layer), precision)
        dims = [config.embed_dim, config.hidden_size, config.num_layers, config.fc1, config.fc2, config.vocab_size,
                FORMATS[precision]]
        super().__init__(dims, tensors, "lstm_scratch_size")
        self.shape = (config.num_layers, 1, config.hidden_size)

    def __call__(
        self, token: torch.Tensor | int, carried: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if carried is None:
            h, c = torch.zeros(self.shape), torch.zeros(self.shape)
        else:
            h, c = (part.to("cpu", torch.float32).contiguous().clone() for part in carried)
        scratch, logits = torch.empty(self.scratch_size), torch.empty(self.vocab)
        self.lib.lstm_step(self.dims, self.table, h.data_ptr(), c.data_ptr(), scratch.data_ptr(), self.checked(token),
                           logits.data_ptr())
        return logits, (h, c)
