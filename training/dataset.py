"""Token streams as overlapping training windows of 257 tokens at stride 1 (paper Section 5.1).

All streams are kept in one concatenated int16 array, and a window is only its index: the stream
it lies in is found by bisection over the streams' first window indices, so memory grows with the
tokens (2 bytes each) and the number of files, not with the windows (257 tokens each).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from daemon.codec import PITCH_BASE, PITCH_MAX, PITCH_MIN
from training.folder_reader import read_folder
from training.midi_loading import MIDI_SUFFIXES, MidiLoadError
from training.token_cache import TokenizedFile

WINDOW = 257  # 256 inputs + the same 256 shifted by one as targets
CONTEXT = WINDOW - 1
PITCH_TOKEN_MIN = PITCH_BASE
PITCH_TOKEN_MAX = PITCH_BASE + PITCH_MAX - PITCH_MIN
SPLIT_STREAM = 4  # seeds the file split of a single folder: np.random.default_rng([seed, SPLIT_STREAM])


def windows_in(length: int) -> int:
    """Windows of 257 tokens at stride 1 in a stream of `length` tokens."""
    return max(0, length - CONTEXT)


class WindowDataset:
    """Every 257-token window of a set of token streams, addressed by index."""

    def __init__(self, streams: Sequence[Sequence[int]]):
        lengths = np.array([len(s) for s in streams], dtype=np.int64)
        self.stream_starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        self.stream_lengths = lengths
        self.tokens = (
            np.concatenate([np.asarray(s, dtype=np.int16) for s in streams])
            if len(streams)
            else np.zeros(0, dtype=np.int16)
        )
        counts = np.maximum(lengths - CONTEXT, 0)
        # the index of each stream's first window; a stream without windows repeats the next one's
        self.first_window = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        self.window_count = int(counts.sum())

    def __len__(self) -> int:
        return self.window_count

    @property
    def token_count(self) -> int:
        return len(self.tokens)

    def window_streams(self, indices: np.ndarray) -> np.ndarray:
        """The stream each window lies in (the last stream whose first window is at or before it)."""
        return np.searchsorted(self.first_window, np.asarray(indices, dtype=np.int64), side="right") - 1

    def window_offsets(self, indices: np.ndarray) -> np.ndarray:
        """Position of each window's first token within its own stream."""
        indices = np.asarray(indices, dtype=np.int64)
        return indices - self.first_window[self.window_streams(indices)]

    def window_starts(self, indices: np.ndarray) -> np.ndarray:
        """Position of each window's first token in self.tokens."""
        indices = np.asarray(indices, dtype=np.int64)
        streams = self.window_streams(indices)
        return self.stream_starts[streams] + indices - self.first_window[streams]

    def windows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """int64[len(indices), 257]: the windows' tokens (a fresh array; the store is untouched)."""
        starts = self.window_starts(indices)
        return self.tokens[starts[:, None] + np.arange(WINDOW)].astype(np.int64)

    def batch(
        self, indices: Sequence[int] | np.ndarray, transpose_rng: np.random.Generator | None = None,
        transpose_max: int = 0,
    ) -> torch.Tensor:
        """LongTensor[B, 257]; with `transpose_rng`, each window is transposed at random."""
        windows = self.windows(indices)
        if transpose_rng is not None:
            transpose_windows(windows, transpose_rng, transpose_max)
        return torch.from_numpy(windows)


def transpose_windows(windows: np.ndarray, rng: np.random.Generator, max_interval: int = 0) -> np.ndarray:
    """Shift the pitch tokens of each row (in place) by one random interval that keeps every pitch
    of that row within the piano range 21..108; rows without pitches are left as they are.

    The interval is uniform over the shifts that fit, 0 included, and with `max_interval` > 0
    over those of at most that many semitones either way."""
    pitch = is_pitch_array(windows)
    has_pitch = pitch.any(axis=1)
    low = np.where(pitch, windows, PITCH_TOKEN_MAX).min(axis=1)
    high = np.where(pitch, windows, PITCH_TOKEN_MIN).max(axis=1)
    down = PITCH_TOKEN_MIN - low  # <= 0
    up = PITCH_TOKEN_MAX - high  # >= 0
    if max_interval > 0:
        down, up = np.maximum(down, -max_interval), np.minimum(up, max_interval)
    # one draw per row whatever its content, so the RNG stream does not depend on the data
    shifts = np.floor(rng.random(len(windows)) * (up - down + 1)).astype(np.int64) + down
    shifts = np.where(has_pitch, shifts, 0)
    windows += np.where(pitch, shifts[:, None], 0)
    return windows


def is_pitch_array(tokens: np.ndarray) -> np.ndarray:
    """bool mask of the pitch tokens of an array (vectorised codec.is_pitch)."""
    return (tokens >= PITCH_TOKEN_MIN) & (tokens <= PITCH_TOKEN_MAX)


class DataError(Exception):
    """A data folder that gives nothing to train or evaluate on; the message says why."""


@dataclass
class Split:
    """The windows of one set of files, and what was read to get them."""

    folder: Path
    files: list[Path]
    windows: WindowDataset
    skipped: list[str] = field(default_factory=list)

    def fingerprint(self) -> dict:
        return {"files": len(self.files), "tokens": self.windows.token_count, "windows": len(self.windows)}


def load_streams(
    folder: str | os.PathLike, report: Callable[[str], None] | None = print
) -> tuple[list[TokenizedFile], list[str]]:
    """Every readable file of a folder (through the token cache); raises DataError when there is none."""
    folder = Path(folder)
    try:
        read = read_folder(folder, report=report)
    except MidiLoadError as error:
        raise DataError(str(error)) from None
    count = len(read.files) + len(read.skipped)
    if count == 0:
        raise DataError(f"{folder}: no MIDI files (looked for {', '.join(MIDI_SUFFIXES)}, recursively)")
    if not read.files:
        raise DataError(f"{folder}: all {count} MIDI files failed to load (first: {read.skipped[0]})")
    return read.files, read.skipped


def split_of(folder: Path, loaded: Sequence[TokenizedFile], skipped: list[str]) -> Split:
    split = Split(folder, [item.path for item in loaded], WindowDataset([item.tokens for item in loaded]), skipped)
    if len(split.windows) == 0:
        raise DataError(f"{folder}: no file has the {WINDOW} tokens one window needs")
    return split


def load_train_test(
    folder: str | os.PathLike, test_ratio: float = 0.1, seed: int = 0, report: Callable[[str], None] | None = print
) -> tuple[Split, Split]:
    """The train and test windows of a data folder: its train/ and test/ subfolders when it has them,
    else its files split by file, a seeded `test_ratio` of them for testing."""
    folder = Path(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return (
            split_of(folder / "train", *load_streams(folder / "train", report)),
            split_of(folder / "test", *load_streams(folder / "test", report)),
        )
    loaded, skipped = load_streams(folder, report)
    if len(loaded) < 2:
        raise DataError(
            f"{folder}: {len(loaded)} readable MIDI file; splitting by file needs at least 2 (or train/ and test/ subfolders)"
        )
    if not 0.0 < test_ratio < 1.0:
        raise DataError(f"test ratio {test_ratio} must lie strictly between 0 and 1")
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(loaded))
    test_count = min(len(loaded) - 1, max(1, round(test_ratio * len(loaded))))
    test = sorted(order[:test_count].tolist())
    train = sorted(order[test_count:].tolist())
    return (
        split_of(folder, [loaded[i] for i in train], skipped),
        split_of(folder, [loaded[i] for i in test], []),
    )


def load_windows(folder: str | os.PathLike, report: Callable[[str], None] | None = print) -> Split:
    """All windows of a folder (its test/ subfolder when it has train/ and test/)."""
    folder = Path(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        folder = folder / "test"
    return split_of(folder, *load_streams(folder, report))
