"""Where the shipped weights live: weights/ beside the daemon package in a checkout
(an editable install keeps it there)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
KINDS = ("transformer", "lstm")


def shipped_weights(kind: str = "transformer") -> Path:
    """The shipped weights folder of a model kind ('transformer' is the default)."""
    if kind not in KINDS:
        raise ValueError(f"no shipped weights of kind {kind!r} (expected one of {KINDS})")
    return WEIGHTS_ROOT / kind


def weights_folder(weights: str) -> Path:
    """A shipped model by name (found beside the package, so an editable install works, from any
    working folder) or a folder; what every command's --weights means."""
    if weights in KINDS:
        return shipped_weights(weights)
    return Path(weights).expanduser()
