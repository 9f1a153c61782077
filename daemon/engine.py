"""Incremental inference behind one interface for both models.

The context rolls forever over the last 256 tokens. Measured with bench/rolling_context.py
on the reference test files (mean NLL per token, streamed past position 256):
- Transformer: the cache slides (a ring of 256 slots, old keys kept as computed, distances from
  absolute positions). Its NLL is within a hundredth of a nat of recomputing the full window
  every step, at the cost of one step instead of a 256-token forward, so no periodic
  re-prefill is done.
- LSTM: (h, c) is carried forever; re-priming from the last 256 tokens gives the same NLL.
The numbers behind this choice are in the README and printed by the script.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from daemon.codec import BAR
from daemon.decoding import automatic_precision, check_precision, resolve_kernel
from daemon.weights import load_weights

CONTEXT = 256


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Engine:
    """Feed tokens, read the next token's logits. Not thread-safe: one thread at a time."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str | None = None,
        name: str = "",
        precision: str = "fp32",
        kernel: str = "auto",
    ) -> None:
        """precision of the weights in decode steps: "fp32" (exact, the default), or on CPU
        "fp16" / "int8" (half / a quarter of the bytes read per token; their NLL cost is printed
        by bench/decode.py --nll), or "auto" (automatic_precision). kernel: decoding.KERNELS
        (bench/decode.py prints every pair's latency). Prefill forwards stay torch fp32."""
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
        self.context: deque[int] = deque(maxlen=self.window)
        self._state = None
        self._logits = np.zeros(model.config.vocab_size, dtype=np.float32)
        self.position = 0
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
        self.context.clear()
        self.position = 0
        with torch.inference_mode():
            self._state = self.model.init_state(precision=self.precision, kernel=self.kernel)
            tokens = list(tokens)[-self.window :]
            if tokens:
                logits, self._state = self.model.prefill(self._tensor(tokens), self._state)
                self._logits = logits.float().cpu().numpy()
        self.context.extend(tokens)
        self.position = len(tokens)

    def feed(self, tokens: Sequence[int]) -> np.ndarray:
        """Append tokens to the context; returns the next token's logits (also in .logits)."""
        with torch.inference_mode():
            native = self.kernel == "native"  # takes the token as an int: no tensor to build
            for token in tokens:
                logits, self._state = self.model.step(token if native else self._tensor((token,)), self._state)
                self.context.append(int(token))
            if tokens:
                self._logits = logits.float().cpu().numpy()
        self.position += len(tokens)
        return self._logits

    @property
    def logits(self) -> np.ndarray:
        """float32[153]: logits of the token after everything fed so far."""
        return self._logits

    def _tensor(self, tokens: Sequence[int]) -> torch.Tensor:
        return torch.tensor(tokens, dtype=torch.long, device=self.device)
