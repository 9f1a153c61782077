"""MIDI files to grid notes and bar lines, with muspy (resolution 4 per quarter = 16th steps)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mido

from daemon.codec import Note, encode_normalised, normalise
from daemon.midifile import bar_starts_from, unreadable_reason

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


def load_midi(path: str | os.PathLike) -> LoadedMidi:
    """Read one file; raises MidiLoadError naming the file and what is wrong."""
    import muspy

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            midi = mido.MidiFile(path)
            if midi.type == 2:
                midi = _patterns_in_sequence(midi)
            music = muspy.from_mido(midi)
    except Exception as error:  # muspy/mido raise many kinds for a broken file
        raise MidiLoadError(f"{path}: not a readable MIDI file ({unreadable_reason(error)})") from None
    # Start and end are rounded to the grid, exactly as muspy's adjust_resolution (the paper's
    # loader) rounds them: a note shorter than half a step that does not straddle a grid
    # boundary gets duration 0 and is dropped. Rounding the duration on its own instead would
    # drop 1,458 more training windows and move the counts away from the paper's.
    steps_per_tick = RESOLUTION / music.resolution
    raw: list[Note] = []
    for track in music.tracks:
        if track.is_drum:
            continue
        for note in track.notes:
            start = round(note.time * steps_per_tick)
            end = round((note.time + note.duration) * steps_per_tick)
            raw.append(Note(start, int(note.pitch), end - start, int(note.velocity or 64)))
    notes, dropped = normalise(raw)
    end = max((n.start for n in notes), default=0)
    signatures = [
        (round(ts.time * steps_per_tick), int(ts.numerator), int(ts.denominator)) for ts in music.time_signatures
    ]
    bars = bar_starts_from(signatures, end)
    return LoadedMidi(path, notes, bars, dropped, encode_normalised(notes, bars))


def _patterns_in_sequence(midi: mido.MidiFile) -> mido.MidiFile:
    """A type 2 file (independent patterns, played one after another) as one type 0 track;
    muspy reads only types 0 and 1."""
    track = mido.MidiTrack()
    pending = 0  # time of each pattern's end_of_track, carried to the next message
    for pattern in midi.tracks:
        for message in pattern:
            if message.type == "end_of_track":
                pending += message.time
            else:
                track.append(message.copy(time=message.time + pending))
                pending = 0
    return mido.MidiFile(type=0, ticks_per_beat=midi.ticks_per_beat, tracks=[track])


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
