"""A folder of MIDI files as tokens: from the token cache where it has them, else parsed (in
worker processes when there are several files to parse) and stored for next time."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.midi_loading import MidiLoadError, load_midi, midi_files
from training.token_cache import CacheEntryError, Entry, TokenCache, TokenizedFile, content_key

PARALLEL_FROM = 8  # files to parse before worker processes pay for their start (~1 s each: muspy's import)


@dataclass
class FolderTokens:
    folder: Path
    files: list[TokenizedFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per unreadable file: its path and why
    parsed: int = 0  # files parsed this time (not found in the cache)
    cached: int = 0  # files whose tokens came from the cache


def parse(path: Path) -> Entry:
    """A file's entry: its tokens, or the reason it cannot be read (without the path: the same
    bytes may lie under another name next time)."""
    try:
        loaded = load_midi(path)
    except MidiLoadError as error:
        return Entry(error=str(error).removeprefix(f"{path}: "))
    return Entry(np.asarray(loaded.tokens, dtype=np.int16), len(loaded.notes), dict(loaded.dropped))


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_cache(report: Callable[[str], None] | None) -> TokenCache | None:
    try:
        return TokenCache()
    except OSError as error:
        if report is not None:
            report(f"warning: no token cache ({error}); every file is parsed")
        return None


def read_folder(
    folder: str | os.PathLike,
    report: Callable[[str], None] | None = print,
    cache: TokenCache | None | bool = True,
    workers: int | None = None,
    progress: bool | None = None,
) -> FolderTokens:
    """Every MIDI file under `folder`; each unreadable one is reported in one line and counted.
    `cache`: True for the user's token cache, False for none, or a TokenCache. `progress`: a bar
    while parsing (None: only on a terminal)."""
    from tqdm import tqdm

    store = open_cache(report) if cache is True else (cache or None)
    result = FolderTokens(Path(folder))
    paths = midi_files(folder)
    keys: list[str | None] = []
    entries: list[Entry | None] = []
    for path in paths:
        try:
            key = content_key(path.read_bytes())
        except OSError as error:
            keys.append(None)
            entries.append(Entry(error=f"unreadable ({error.strerror or error})"))
            continue
        keys.append(key)
        entries.append(_cached(store, key, path, report))
    missing = [index for index, entry in enumerate(entries) if entry is None]
    workers = min(workers or default_workers(), len(missing))
    disable = None if progress is None else not progress  # None: tqdm shows it on a terminal only
    with tqdm(total=len(missing), desc=f"reading {Path(folder).name}", unit="file", leave=False, disable=disable) as bar:
        for index, entry in zip(missing, _parse_all([paths[i] for i in missing], workers)):
            entries[index] = entry
            if store is not None:
                _store(store, keys[index], entry, report)
            bar.update(1)
    result.parsed, result.cached = len(missing), len(paths) - len(missing)
    for path, entry in zip(paths, entries):
        if entry.error is not None:
            result.skipped.append(f"{path}: {entry.error}")
            if report is not None:
                report(f"skipped {path}: {entry.error}")
        else:
            result.files.append(TokenizedFile(path, entry.tokens, entry.notes, Counter(entry.dropped)))
    return result


def _cached(store: TokenCache | None, key: str, path: Path, report: Callable[[str], None] | None) -> Entry | None:
    if store is None:
        return None
    try:
        return store.read(key)
    except CacheEntryError as error:
        if report is not None:
            report(f"warning: damaged token cache entry, re-reading {path}: {error}")
        return None


def _store(store: TokenCache, key: str | None, entry: Entry, report: Callable[[str], None] | None) -> None:
    if key is None:
        return
    try:
        store.write(key, entry)
    except OSError as error:
        if report is not None:
            report(f"warning: could not store tokens in {store.folder}: {error.strerror or error}")


def _parse_all(paths: list[Path], workers: int):
    """Each path's entry, in order; in `workers` processes when there are enough files."""
    if workers < 2 or len(paths) < PARALLEL_FROM:
        yield from map(parse, paths)
        return
    # spawn, not fork: the parent may hold torch's thread pools, which do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(parse, paths, chunksize=max(1, min(16, len(paths) // (4 * workers))))
