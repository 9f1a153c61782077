"""Each MIDI file's tokens on disk, so a folder is parsed once, not by every fit, evaluate and stats.

An entry is keyed by the sha256 of the file's bytes together with the codec and loader versions: a
changed file gets a new key (so it is re-read), and a change of the encoding makes every entry
unreachable. Entries live in the user's cache folder ($XDG_CACHE_HOME/antiphon/tokens or
~/.cache/antiphon/tokens). Each is written under a temporary name and renamed into place, so
processes filling the cache at once each leave a whole entry, and the last rename wins with the same
content. An entry is a JSON header line and the tokens as little-endian int16 (never pickle);
a torn or damaged entry fails its length or CRC check and is re-made by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.codec import CODEC_VERSION
from daemon.paths import cache_folder

ENTRY_FORMAT = 1
# Bump when training/midi_loading.py turns the same bytes into other tokens (rounding, normalisation).
LOADER_VERSION = 1
MAGIC = b"antiphon-tokens\n"


class CacheEntryError(Exception):
    """An entry that exists but cannot be used; the message says why."""


@dataclass
class TokenizedFile:
    """What training needs of one MIDI file: its tokens and how many notes were kept and dropped."""

    path: Path
    tokens: np.ndarray  # int16
    notes: int
    dropped: Counter = field(default_factory=Counter)


@dataclass
class Entry:
    """A cached outcome: the file's tokens, or why it cannot be read (`error`, the skip line)."""

    tokens: np.ndarray | None = None
    notes: int = 0
    dropped: dict = field(default_factory=dict)
    error: str | None = None


def content_key(content: bytes) -> str:
    digest = hashlib.sha256(f"{CODEC_VERSION}\0{LOADER_VERSION}\0".encode())
    digest.update(content)
    return digest.hexdigest()


class TokenCache:
    def __init__(self, folder: str | os.PathLike | None = None):
        """Entries under `folder`, by default the user's cache folder; raises OSError when none is writable."""
        self.folder = Path(folder) if folder is not None else cache_folder("tokens")

    def path_of(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.tokens"

    def read(self, key: str) -> Entry | None:
        """The entry of `key`, None when there is none; raises CacheEntryError when it is damaged."""
        path = self.path_of(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CacheEntryError(f"{path}: unreadable ({error.strerror or error})") from None
        if not data.startswith(MAGIC) or b"\n" not in data[len(MAGIC) :]:
            raise CacheEntryError(f"{path}: not a token cache entry")
        end = data.index(b"\n", len(MAGIC))
        try:
            header = json.loads(data[len(MAGIC) : end])
            body = data[end + 1 :]
            if header["format"] != ENTRY_FORMAT:
                raise CacheEntryError(f"{path}: entry format {header['format']!r}, this version reads {ENTRY_FORMAT}")
            if header["error"] is not None:
                return Entry(error=header["error"])
            if len(body) != 2 * header["tokens"] or zlib.crc32(body) != header["crc32"]:
                raise CacheEntryError(f"{path}: {len(body) // 2} tokens or their checksum differ from its header's")
            tokens = np.frombuffer(body, dtype="<i2").astype(np.int16)
            return Entry(tokens, int(header["notes"]), dict(header["dropped"]))
        except (ValueError, KeyError, TypeError) as error:
            raise CacheEntryError(f"{path}: unreadable header ({error})") from None

    def write(self, key: str, entry: Entry) -> None:
        """Store `entry` under `key` atomically (a reader sees the old entry, none, or this one whole)."""
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = b"" if entry.tokens is None else np.asarray(entry.tokens, dtype="<i2").tobytes()
        header = {"format": ENTRY_FORMAT, "codec": CODEC_VERSION, "tokens": len(body) // 2, "crc32": zlib.crc32(body),
                  "notes": entry.notes, "dropped": entry.dropped, "error": entry.error}
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}-", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(MAGIC + json.dumps(header).encode() + b"\n" + body)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
