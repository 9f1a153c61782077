"""Tiny generated MIDI data sets for the training tests (written with daemon.midifile, no binary fixtures)."""

from __future__ import annotations

import random
from pathlib import Path

from daemon.codec import Note
from daemon.midifile import write_midi

# Tiny configs: the tests check plumbing, not music.
TINY_LSTM = {"embed_dim": 8, "hidden_size": 16, "num_layers": 2, "fc1": 16, "fc2": 16}
TINY_TRANSFORMER = {"d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 16, "max_distance": 15}


def random_notes(rng: random.Random, bars: int) -> list[Note]:
    """About 8 notes a bar of 16 steps, pitches spread over the middle of the piano."""
    notes = []
    for bar in range(bars):
        for _ in range(8):
            notes.append(Note(bar * 16 + rng.randrange(16), rng.randrange(40, 90), rng.randrange(1, 9)))
    return notes


def write_set(folder: Path, files: int, bars: int = 16, seed: int = 0, prefix: str = "song") -> list[Path]:
    """`files` MIDI files of random notes; each has well over 257 tokens."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(files):
        path = folder / f"{prefix} {index:02d}.mid"
        write_midi(path, [("piano", random_notes(rng, bars))])
        paths.append(path)
    return paths


def write_split(root: Path, train: int = 6, test: int = 2, bars: int = 16, seed: int = 0) -> Path:
    """A data folder with train/ and test/ subfolders."""
    write_set(root / "train", train, bars, seed)
    write_set(root / "test", test, bars, seed + 1000)
    return root


def write_broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"MThd this is not a MIDI file")
    return path
