"""Sampling as small pure functions over one row of logits (numpy, float32[153])."""

from __future__ import annotations

import numpy as np


def make_generator(seed: int | None = None) -> np.random.Generator:
    return np.random.default_rng(seed)


def masked_log_probs(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over the allowed tokens (-inf elsewhere)."""
    if not mask.any():
        raise ValueError("the mask allows no token")
    masked = np.where(mask, logits, -np.inf)
    peak = masked.max()
    return masked - (peak + np.log(np.exp(masked - peak).sum()))


def top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (at least one)."""
    if top_p >= 1.0:
        return probs
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1]
    filtered = np.zeros_like(probs)
    filtered[keep] = probs[keep]
    return filtered


def sample(
    logits: np.ndarray, mask: np.ndarray, temperature: float, top_p: float, generator: np.random.Generator
) -> int:
    """One token drawn from softmax(logits / temperature) over the mask, nucleus-filtered.

    temperature 0 is greedy. A masked-out token is never returned."""
    masked = np.where(mask, np.asarray(logits, dtype=np.float64), -np.inf)
    if temperature <= 0:
        return int(np.argmax(masked))
    # Shift before dividing: the best allowed token sits at 0, so even a vanishing temperature
    # gives -inf (never nan) for the rest and the mask survives.
    with np.errstate(over="ignore"):
        scaled = (masked - masked.max()) / temperature
    probs = np.exp(masked_log_probs(scaled, mask))
    probs = top_p_filter(probs, top_p)
    point = generator.random() * probs.sum()
    index = int(np.searchsorted(np.cumsum(probs), point, side="right"))
    # Rounding can land past the last allowed token; fall back to the most likely one.
    if index >= probs.size or probs[index] == 0.0:
        index = int(np.argmax(probs))
    return index
