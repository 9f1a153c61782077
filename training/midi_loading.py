"""MIDI files to grid notes and bar lines, with muspy (resolution 4 per quarter = 16th steps)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from daemon.codec import Note, encode_normalised, normalise

RESOLUTION = 4
MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")


class MidiLoadError(Exception):
    """A MIDI file that cannot be used; the message names the file and the reason."""


@dataclass
class LoadedMidi:
    path: Path
    notes: list[Note]
    bar_starts: list[int]
    dropped: Counter = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)


def bar_starts_from(time_signatures: list[tuple[int, int, int]], end: int) -> list[int]:
    """Bar line steps in [0, end] from (time, numerator, denominator) signatures; 4/4 when none."""
    changes = sorted((t, n, d) for t, n, d in time_signatures if n > 0 and d > 0)
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0, 4, 4))
    bars: list[int] = []
    for index, (time, numerator, denominator) in enumerate(changes):
        length = max(1, round(numerator * 4 * RESOLUTION / denominator))
        stop = changes[index + 1][0] if index + 1 < len(changes) else end + 1
        bars.extend(range(max(time, 0), min(stop, end + 1), length))
    return sorted(set(bars))


def load_midi(path: str | os.PathLike) -> LoadedMidi:
    """Read one file; raises MidiLoadError naming the file and what is wrong."""
    import muspy

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            music = muspy.read_midi(path)
            music.adjust_resolution(RESOLUTION)
    except Exception as error:  # muspy/mido raise many kinds for a broken file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MidiLoadError(f"{path}: not a readable MIDI file ({reason})") from None
    raw: list[Note] = []
    for track in music.tracks:
        if track.is_drum:
            continue
        for note in track.notes:
            raw.append(Note(int(note.time), int(note.pitch), int(note.duration), int(note.velocity or 64)))
    notes, dropped = normalise(raw)
    end = max((n.start for n in notes), default=0)
    signatures = [(int(ts.time), int(ts.numerator), int(ts.denominator)) for ts in music.time_signatures]
    bars = bar_starts_from(signatures, end)
    return LoadedMidi(path, notes, bars, dropped, encode_normalised(notes, bars))


def midi_files(folder: str | os.PathLike) -> list[Path]:
    """Every MIDI file under a folder, recursively, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MidiLoadError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)


@dataclass
class FolderSummary:
    folder: Path
    loaded: list[LoadedMidi] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def streams(self) -> list[list[int]]:
        return [item.tokens for item in self.loaded]


def load_folder(folder: str | os.PathLike, report=print) -> FolderSummary:
    """All readable files of a folder; each unreadable one is reported in one line and counted."""
    summary = FolderSummary(Path(folder))
    for path in midi_files(folder):
        try:
            summary.loaded.append(load_midi(path))
        except MidiLoadError as error:
            summary.skipped.append(str(error))
            if report is not None:
                report(f"skipped {error}")
    return summary


def iter_tokens(folder: str | os.PathLike) -> Iterator[list[int]]:
    for item in load_folder(folder).loaded:
        yield item.tokens
