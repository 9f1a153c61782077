"""Mean NLL per token of a weights folder on a data folder's windows, plain and under the grammar mask.

The grammar-masked NLL renormalises each prediction over the tokens the grammar allows at that point,
which is the distribution the daemon's sampling actually draws from. Masks come from walking each
whole file's token stream, so a window starting mid-stream gets the masks it has in context.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from daemon.codec import VOCAB_SIZE
from daemon.grammar import masks_along
from training.dataset import CONTEXT, WindowDataset, load_windows


def target_nll(logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """float[B, T]: NLL of each target under logits [B, T, 153]; with bool `masks` [B, T, 153] the
    distribution is renormalised over the allowed tokens (inf where the target is not allowed)."""
    logits = logits.float()
    if masks is not None:
        logits = logits.masked_fill(~masks, float("-inf"))
    return -torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def token_nll(model: nn.Module, batch: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """float[B, 256]: NLL of each of a batch of windows' targets given its inputs (see target_nll)."""
    return target_nll(model(batch[:, :-1]), batch[:, 1:], masks)


def window_nll(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """float[B]: each window's mean NLL per token."""
    return token_nll(model, batch).mean(dim=1)


class GrammarMasks:
    """The grammar mask before every token of a WindowDataset, stored as an index into the few
    distinct masks (a bool[tokens, 153] array would be 100 MB for the reference train set)."""

    def __init__(self, dataset: WindowDataset):
        ids = np.empty(dataset.token_count, dtype=np.int32)
        table: dict[bytes, int] = {}
        rows: list[np.ndarray] = []
        for start, length in zip(dataset.stream_starts, dataset.stream_lengths):
            masks = masks_along(dataset.tokens[start : start + length].tolist())
            packed = np.packbits(masks, axis=1)
            for position, key in enumerate(map(bytes, packed)):
                index = table.get(key)
                if index is None:
                    index = table[key] = len(rows)
                    rows.append(masks[position])
                ids[start + position] = index
        self.ids = ids
        self.table = torch.from_numpy(np.array(rows, dtype=bool).reshape(-1, VOCAB_SIZE))
        self.dataset = dataset

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """bool[B, 256, 153]: row j is the mask for target j (the token after input j)."""
        starts = self.dataset.window_starts(indices)
        return self.table[torch.from_numpy(self.ids[starts[:, None] + np.arange(CONTEXT)]).long()]


@dataclass
class Evaluation:
    nll: float
    nll_grammar: float
    stderr: float
    stderr_grammar: float
    windows: int
    windows_total: int
    tokens: int
    masked_targets: int  # targets the grammar forbids (flawed files); left out of nll_grammar
    seconds: float
    weights: str
    data: str
    kind: str

    def to_dict(self) -> dict:
        return asdict(self)


def sample_indices(total: int, count: int | None, seed: int) -> np.ndarray:
    """All windows, or a seeded sample of `count` of them without repeats, sorted."""
    if count is None or count <= 0 or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def standard_error(values: np.ndarray, population: int) -> float:
    """Standard error of the mean of a sample drawn without replacement from `population` windows
    (0 when every window was used: the mean is then exact)."""
    n = len(values)
    if n < 2:
        return float("nan")
    correction = max(0.0, 1.0 - n / population)
    return float(np.std(values, ddof=1) / math.sqrt(n) * math.sqrt(correction))


def evaluate(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    windows: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = False,
    report: Callable[[str], None] | None = print,
) -> Evaluation:
    """Evaluate a weights folder on a data folder (its test/ subfolder when it has train/ and test/)."""
    from tqdm import tqdm

    from daemon.weights import load_weights

    began = time.monotonic()
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_weights(weights, device=target)
    split = load_windows(data, report=report)
    dataset = split.windows
    masks = GrammarMasks(dataset)
    indices = sample_indices(len(dataset), windows, seed)
    plain_sums, grammar_sums, grammar_counts = [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(indices), batch_size), disable=not progress, leave=False, desc="evaluate"):
            chosen = indices[start : start + batch_size]
            batch = dataset.batch(chosen).to(target)
            logits = loaded.model(batch[:, :-1])
            plain = target_nll(logits, batch[:, 1:])
            masked = target_nll(logits, batch[:, 1:], masks.batch(chosen).to(target))
            allowed = torch.isfinite(masked)
            plain_sums.append(plain.sum(dim=1).cpu())
            grammar_sums.append(torch.where(allowed, masked, 0.0).sum(dim=1).cpu())
            grammar_counts.append(allowed.sum(dim=1).cpu())
    plain_sum = torch.cat(plain_sums).double().numpy()
    grammar_sum = torch.cat(grammar_sums).double().numpy()
    grammar_count = torch.cat(grammar_counts).numpy()
    tokens = len(indices) * CONTEXT
    per_window_grammar = grammar_sum / np.maximum(grammar_count, 1)
    return Evaluation(
        nll=float(plain_sum.sum() / tokens),
        nll_grammar=float(grammar_sum.sum() / max(int(grammar_count.sum()), 1)),
        stderr=standard_error(plain_sum / CONTEXT, len(dataset)),
        stderr_grammar=standard_error(per_window_grammar, len(dataset)),
        windows=len(indices),
        windows_total=len(dataset),
        tokens=tokens,
        masked_targets=int(tokens - grammar_count.sum()),
        seconds=round(time.monotonic() - began, 2),
        weights=str(Path(weights)),
        data=str(split.folder),
        kind=loaded.config.kind,
    )
