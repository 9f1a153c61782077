"""Where things live: the shipped weights (weights/ beside the daemon package in a checkout, which an
editable install keeps; the package `antiphon_weights` beside it in an installed wheel), weights named by
the user, the user's cache folder and the daemon's state folder."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

KINDS = ("transformer", "lstm")


def _weights_root() -> Path:
    # pyproject.toml maps weights/ to the package antiphon_weights: a wheel installs it under that name.
    beside = Path(__file__).resolve().parent.parent
    checkout = beside / "weights"
    return checkout if (checkout / KINDS[0]).is_dir() else beside / "antiphon_weights"


WEIGHTS_ROOT = _weights_root()


def installed_version() -> str:
    """The installed distribution's version (its metadata); a bare checkout that was never installed
    says so instead of guessing."""
    try:
        return metadata.version("antiphon")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install .)"


def shipped_weights(kind: str = "transformer") -> Path:
    """The shipped weights folder of a model kind ('transformer' is the default)."""
    if kind not in KINDS:
        raise ValueError(f"no shipped weights of kind {kind!r} (expected one of {KINDS})")
    return WEIGHTS_ROOT / kind


def weights_folder(weights: str | os.PathLike) -> Path:
    """A shipped model by name (found beside the package, so an editable install works) or a folder."""
    if str(weights) in KINDS:
        return shipped_weights(str(weights))
    try:
        return Path(weights).expanduser()
    except RuntimeError:  # "~nobody/...": no such user; the folder check names it
        return Path(weights)


def cache_folder(*parts: str) -> Path:
    """A folder under the user's cache that can be trusted: $CACHE_DIRECTORY under systemd, else
    $XDG_CACHE_HOME/antiphon or ~/.cache/antiphon, made with mode 0700 when missing, owned by this
    user and writable by no one else (another user could plant what we load). Never a shared
    temporary path. Raises OSError saying why there is none."""
    base = os.environ.get("CACHE_DIRECTORY") or os.environ.get("XDG_CACHE_HOME")
    try:
        root = (Path(base) if base else Path.home() / ".cache") / "antiphon"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = root.stat()
    except (OSError, RuntimeError) as error:  # RuntimeError: no home directory to be found
        raise OSError(f"no cache folder ({error})") from None
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise OSError(
            f"not using the cache folder {root} (owner uid {info.st_uid}, mode {info.st_mode & 0o7777:o}: it must be "
            f"this user's, uid {os.geteuid()}, and writable by no one else)"
        )
    if not os.access(root, os.W_OK | os.X_OK):
        raise OSError(f"cache folder {root} is not writable")
    return _private_folder(root.joinpath(*parts))


def _private_folder(folder: Path) -> Path:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot make {folder} ({error.strerror or error})") from None
    return folder


def state_folder() -> Path:
    """What the daemon keeps across restarts (learned controls): $STATE_DIRECTORY under systemd (its
    first entry), else $XDG_STATE_HOME/antiphon or ~/.local/state/antiphon; never the user's config
    folder. Made with mode 0700 when missing; raises OSError saying why there is none."""
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return _private_folder(Path(systemd))
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return _private_folder(Path(base) / "antiphon")


def default_takes_folder() -> Path:
    """$STATE_DIRECTORY/takes under systemd, else $XDG_DATA_HOME/antiphon/takes or
    ~/.local/share/antiphon/takes (not made here)."""
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd) / "takes"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "antiphon" / "takes"
