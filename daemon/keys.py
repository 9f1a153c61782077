"""Keys and scales: Krumhansl–Schmuckler key finding over grid notes, and the scale of a key.

The key of a phrase is the major or minor key whose Krumhansl–Kessler profile correlates best
with the phrase's duration-weighted pitch-class histogram. A minor key's scale is the natural
minor plus the raised seventh (the leading tone of harmonic minor), which minor-key music uses
as often as the natural seventh.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from daemon.codec import Note

PITCH_CLASSES = 12
NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982), probe-tone ratings from the tonic up.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)
MINOR_STEPS = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor plus the leading tone
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY_TEXT = re.compile(r"^\s*([A-Ga-g])([#b]?)\s*(major|minor|maj|min|m)?\s*$")


class Key(NamedTuple):
    tonic: int  # pitch class 0..11, C = 0
    minor: bool

    @property
    def scale(self) -> np.ndarray:
        """bool[12]: the pitch classes of the key's scale."""
        mask = np.zeros(PITCH_CLASSES, dtype=bool)
        mask[[(self.tonic + step) % PITCH_CLASSES for step in (MINOR_STEPS if self.minor else MAJOR_STEPS)]] = True
        return mask

    def __str__(self) -> str:
        return f"{NAMES[self.tonic]} {'minor' if self.minor else 'major'}"


def parse_key(text: str) -> Key:
    """'C', 'C major', 'F# minor', 'Bbm', 'a minor' -> Key; raises ValueError on anything else."""
    match = _KEY_TEXT.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a key like 'C major', 'F# minor' or 'Bbm'")
    letter, accidental, mode = match.groups()
    tonic = (_LETTERS[letter.upper()] + {"#": 1, "b": -1, "": 0}[accidental]) % PITCH_CLASSES
    return Key(tonic, mode in ("minor", "min", "m"))


def pitch_class_histogram(notes: Iterable[Note], weighted: bool = True) -> np.ndarray:
    """float[12]: each pitch class's total duration (or note count when not weighted)."""
    histogram = np.zeros(PITCH_CLASSES)
    for note in notes:
        histogram[note.pitch % PITCH_CLASSES] += note.duration if weighted else 1
    return histogram


def _correlations(histogram: np.ndarray) -> np.ndarray:
    """float[24]: Pearson correlation with every major key (0..11), then every minor key."""
    rows = [np.roll(profile, tonic) for profile in (MAJOR_PROFILE, MINOR_PROFILE) for tonic in range(PITCH_CLASSES)]
    profiles = np.array(rows)
    centred = profiles - profiles.mean(axis=1, keepdims=True)
    values = histogram - histogram.mean()
    spread = np.linalg.norm(centred, axis=1) * np.linalg.norm(values)
    return centred @ values / spread


def find_key(notes: Iterable[Note]) -> Key | None:
    """The key that fits the notes best (Krumhansl–Schmuckler); None when there is nothing to go
    on (no notes, or every pitch class equally present)."""
    histogram = pitch_class_histogram(notes)
    if not histogram.any() or np.all(histogram == histogram[0]):
        return None
    best = int(np.argmax(_correlations(histogram)))
    return Key(best % PITCH_CLASSES, best >= PITCH_CLASSES)


def in_scale(pitch: int, key: Key) -> bool:
    return bool(key.scale[pitch % PITCH_CLASSES])
