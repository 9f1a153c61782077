"""Incremental inference behind one interface for both models.

The engine chooses the decode step once, when it is built: the kernel (native where it builds,
else torch) and the precision of the weights; the models' steps are plain functions of
(token, state) prepared from each model's DECODE_LAYOUT (decoding.py, native.py).

The context rolls forever over the last 256 tokens:
- Transformer: the cache slides (a ring of 256 slots, old keys kept as computed, distances from
  absolute positions), with no periodic re-prefill.
- LSTM: (h, c) is carried forever.
Within the last ROLLBACK_TOKENS, the engine can go back (rollback): the states and logits the
steps returned are kept in preallocated rings (references for the LSTM, whose steps return new
tensors; the Transformer's cache keeps what its ring overwrote, see KVCache).
bench/rolling_context.py prints what each costs in NLL per token against recomputing the full
window every step (the paper's method), and what re-prefilling / re-priming would change.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daemon import native
from daemon.codec import BAR
from daemon.decoding import (
    ROLLBACK_TOKENS,
    DecodableModel,
    Decoder,
    automatic_precision,
    check_precision,
    rewound,
    torch_decoder,
)
from daemon.model import ModelConfig
from daemon.weights import load_weights

log = logging.getLogger("antiphon.engine")

CONTEXT = 256
# Which code runs a decode step: "torch" (the models' decode_step, any device and precision) or
# "native" (daemon/native.py: the whole step as one C call, CPU only); both compute the same
# function, bench/decode.py prints their latencies. "auto" = native where it builds.
KERNELS = ("auto", "native", "torch")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_kernel(kernel: str, device: torch.device, config: ModelConfig | None = None) -> str:
    """"auto" -> "native" on a CPU where the native kernel builds (and runs a model of this
    config, when given), else "torch"; "native" where it cannot run raises ValueError saying why."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown decode kernel {kernel!r} (expected one of {list(KERNELS)})")
    if kernel == "torch":
        return kernel
    if device.type != "cpu":
        reason = f"the model is on {device}"
    else:
        reason = native.native_unavailable() or (native.unsupported(config) if config is not None else None)
    if reason is None:
        return "native"
    if kernel == "native":
        raise ValueError(f"decode kernel 'native' cannot run: {reason}")
    log.info("decode kernel torch: native not used (%s)", reason)
    return "torch"


class Engine:
    """Feed tokens, read the next token's logits. Not thread-safe: one thread at a time."""

    def __init__(
        self,
        model: DecodableModel,
        device: torch.device | str | None = None,
        name: str = "",
        precision: str = "fp32",
        kernel: str = "auto",
    ) -> None:
        """precision of the weights in decode steps: "fp32" (exact, the default), or on CPU
        "fp16" / "int8" (half / a quarter of the bytes read per token; their NLL cost is printed
        by bench/decode.py --nll), or "auto" (automatic_precision). kernel: KERNELS
        (bench/decode.py prints every pair's latency). Prefill forwards stay torch fp32.
        The step is prepared from the model's weights here; after changing them in place, call
        prepare()."""
        self.device = torch.device(device) if device is not None else default_device()
        self.kernel = resolve_kernel(kernel, self.device, model.config)
        if precision == "auto":
            precision = automatic_precision(self.device, self.kernel)
        check_precision(precision, self.device)
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.kind: str = model.config.kind
        self.name = name or self.kind
        self.window = getattr(model.config, "context", CONTEXT)
        # The window plus what a rollback may bring back into it.
        self._tokens: deque[int] = deque(maxlen=self.window + ROLLBACK_TOKENS)
        self.vocab_size: int = model.config.vocab_size
        self._decoder: Decoder | None = None
        self._state = None
        self._logits = np.zeros(self.vocab_size, dtype=np.float32)
        self.position = 0
        # What the step returned after position p, at p % ring: (state, logits tensor).
        self._ring = ROLLBACK_TOKENS + 1
        self._states: list[Any] = [None] * self._ring
        self._step_logits: list[Any] = [None] * self._ring
        self._earliest = 0  # the earliest position a rollback can return to (the last reset's)
        self.prepare()

    def prepare(self) -> None:
        """Prepare the decode step from the model's current weights, and start afresh (reset)."""
        with torch.inference_mode():
            prepare = native.native_decoder if self.kernel == "native" else torch_decoder
            self._decoder = prepare(self.model, self.precision)
        self.reset()

    @classmethod
    def load(
        cls,
        weights_dir: str | os.PathLike,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        kernel: str = "auto",
    ) -> Engine:
        loaded = load_weights(weights_dir, device or default_device())
        return cls(loaded.model, device, name=str(Path(weights_dir)), precision=precision, kernel=kernel)

    def reset(self, tokens: Sequence[int] = (BAR,)) -> None:
        """Forget everything and prime with `tokens` (the last window of them)."""
        self._tokens.clear()
        self.position = 0
        logits = torch.zeros(self.vocab_size)
        with torch.inference_mode():
            self._state = self._decoder.new_state()
            tokens = list(tokens)[-self.window :]
            if tokens:
                logits, self._state = self.model.prefill(self._tensor(tokens), self._state)
                self._logits = logits.float().cpu().numpy()
        self._tokens.extend(tokens)
        self.position = self._earliest = len(tokens)
        self._states[self.position % self._ring] = self._state
        self._step_logits[self.position % self._ring] = logits

    def feed(self, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to the context; returns the next token's logits (also in .logits).
        A token outside the vocabulary raises IndexError before the state moves on."""
        step, vocab_size, ring = self._decoder.step, self.vocab_size, self._ring
        states, step_logits, position = self._states, self._step_logits, self.position
        with torch.inference_mode():
            try:
                for token in tokens:
                    token = int(token)
                    if not 0 <= token < vocab_size:  # the steps read the embedding row unchecked
                        raise IndexError(f"token {token} is outside the vocabulary (0..{vocab_size - 1})")
                    logits, self._state = step(token, self._state)
                    self._tokens.append(token)
                    position += 1
                    states[position % ring] = self._state
                    step_logits[position % ring] = logits
            finally:
                if position != self.position:
                    self.position = position
                    self._logits = logits.float().cpu().numpy()
        return self._logits

    def rollback(self, position: int) -> np.ndarray:
        """Return to the engine as it was after `position` tokens (at most ROLLBACK_TOKENS back,
        and not before the last reset): feeding then continues from there exactly as if the
        tokens after it had never been fed. Returns that position's next-token logits."""
        if not max(self._earliest, self.position - ROLLBACK_TOKENS) <= position <= self.position:
            raise ValueError(f"cannot roll back to position {position}: the engine is at {self.position} and "
                             f"keeps the last {ROLLBACK_TOKENS} tokens since position {self._earliest}")
        if position == self.position:
            return self._logits
        with torch.inference_mode():
            self._state = rewound(self._states[position % self._ring], position)
            self._logits = self._step_logits[position % self._ring].float().cpu().numpy()
        for _ in range(self.position - position):
            self._tokens.pop()
        self.position = position
        return self._logits

    def rollback_limit(self) -> int:
        """The earliest position rollback() can return to now."""
        return max(self._earliest, self.position - ROLLBACK_TOKENS)

    @property
    def context(self) -> list[int]:
        """The tokens in the window (the last `window` fed)."""
        skip = max(0, len(self._tokens) - self.window)
        return list(itertools.islice(self._tokens, skip, None))

    @property
    def logits(self) -> np.ndarray:
        """float32[153]: logits of the token after everything fed so far."""
        return self._logits

    def _tensor(self, tokens: Sequence[int]) -> torch.Tensor:
        return torch.tensor(tokens, dtype=torch.long, device=self.device)
