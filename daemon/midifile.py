"""Grid notes to and from Standard MIDI Files with mido (one track per part)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import mido

from daemon.codec import Note

TICKS_PER_STEP = 120  # 480 ticks per quarter, 4 steps per quarter


def write_midi(
    path: str | os.PathLike, parts: Sequence[tuple[str, Sequence[Note]]], bpm: float = 120.0,
    beats_per_bar: int = 4, channel: int = 0,
) -> None:
    """A type-1 file: a tempo/meter track, then one named track per (name, notes) part."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_STEP * 4)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=beats_per_bar, denominator=4, time=0))
    midi.tracks.append(meta)
    for name, notes in parts:
        events = []
        for note in notes:
            events.append((note.start * TICKS_PER_STEP, 1, note.pitch, note.velocity))
            events.append(((note.start + note.duration) * TICKS_PER_STEP, 0, note.pitch, 0))
        events.sort()  # note-offs (0) before note-ons (1) at the same tick: re-struck notes stay apart
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=name, time=0))
        now = 0
        for tick, on, pitch, velocity in events:
            kind = "note_on" if on else "note_off"
            track.append(mido.Message(kind, note=pitch, velocity=velocity, channel=channel, time=tick - now))
            now = tick
        midi.tracks.append(track)
    midi.save(path)


class MidiFileError(Exception):
    """A MIDI file that cannot be read; the message names the file and the reason."""


def unreadable_reason(error: BaseException) -> str:
    """One line saying why a MIDI file could not be read (an EOFError says nothing itself)."""
    if isinstance(error, EOFError):
        return "the file ends early: empty or truncated"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def bar_starts_from(time_signatures: Sequence[tuple[int, int, int]], end: int) -> list[int]:
    """Bar line steps in [0, end] from (step, numerator, denominator) signatures; 4/4 when none."""
    changes = sorted((t, n, d) for t, n, d in time_signatures if n > 0 and d > 0)
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0, 4, 4))
    bars: list[int] = []
    for index, (time, numerator, denominator) in enumerate(changes):
        length = max(1, round(numerator * 16 / denominator))
        stop = changes[index + 1][0] if index + 1 < len(changes) else end + 1
        bars.extend(range(max(time, 0), min(stop, end + 1), length))
    return sorted(set(bars))


def read_midi(path: str | os.PathLike) -> tuple[list[Note], list[int]]:
    """Notes (16th steps, start and end rounded as muspy rounds them) and bar lines.

    Drums (channel 10) are left out; notes never released end at the file's last event."""
    try:
        midi = mido.MidiFile(path)
    except (OSError, EOFError, ValueError, KeyError, IndexError) as error:
        raise MidiFileError(f"{path}: not a readable MIDI file ({unreadable_reason(error)})") from None
    steps_per_tick = 4 / midi.ticks_per_beat
    notes: list[Note] = []
    signatures: list[tuple[int, int, int]] = []
    last_tick = 0
    for track in midi.tracks:
        tick = 0
        sounding: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for message in track:
            tick += message.time
            if message.type == "time_signature":
                signatures.append((round(tick * steps_per_tick), message.numerator, message.denominator))
            elif message.type in ("note_on", "note_off") and message.channel != 9:
                key = (message.channel, message.note)
                if message.type == "note_on" and message.velocity > 0:
                    sounding.setdefault(key, []).append((tick, message.velocity))
                elif sounding.get(key):
                    start, velocity = sounding[key].pop(0)
                    notes.append(_note(start, tick, message.note, velocity, steps_per_tick))
        last_tick = max(last_tick, tick)
        for (_, pitch), held in sounding.items():
            notes.extend(_note(start, last_tick, pitch, velocity, steps_per_tick) for start, velocity in held)
    end = max((n.start for n in notes), default=0)
    return sorted(notes), bar_starts_from(signatures, end)


def _note(start: int, end: int, pitch: int, velocity: int, steps_per_tick: float) -> Note:
    first = round(start * steps_per_tick)
    return Note(first, pitch, round(end * steps_per_tick) - first, velocity)
