"""Where things live: the shipped weights (weights/ beside the daemon package in a checkout; an
editable install keeps it there), weights named by the user, and the user's cache folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
KINDS = ("transformer", "lstm")


def shipped_weights(kind: str = "transformer") -> Path:
    """The shipped weights folder of a model kind ('transformer' is the default)."""
    if kind not in KINDS:
        raise ValueError(f"no shipped weights of kind {kind!r} (expected one of {KINDS})")
    return WEIGHTS_ROOT / kind


def weights_folder(weights: str | os.PathLike) -> Path:
    """A shipped model by name (found beside the package, so an editable install works) or a folder."""
    if str(weights) in KINDS:
        return shipped_weights(str(weights))
    return Path(weights).expanduser()


def cache_folder(*parts: str) -> Path:
    """A writable folder under the user's cache: $CACHE_DIRECTORY under systemd, else
    $XDG_CACHE_HOME/antiphon or ~/.cache/antiphon, else the temporary folder; raises OSError
    naming the places tried when none is writable."""
    base = os.environ.get("CACHE_DIRECTORY") or os.environ.get("XDG_CACHE_HOME")
    candidates = [Path(base) / "antiphon"] if base else []
    candidates += [Path.home() / ".cache" / "antiphon", Path(tempfile.gettempdir()) / f"antiphon-{os.getuid()}"]
    for root in candidates:
        folder = root.joinpath(*parts)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise OSError(f"no writable cache folder (tried {', '.join(str(root.joinpath(*parts)) for root in candidates)})")
