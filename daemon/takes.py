"""Every take kept: the jam as Standard MIDI Files, the player's and the model's notes on two named
tracks, with the tempo in use.

A take is one file, named by the time it began (take-YYYYmmdd-HHMMSS.mid); a silence of
SPLIT_SILENCE_S or more starts the next. The file is rewritten (to a temporary name, then renamed)
after every exchange, on a writer thread, so a crash loses at most the exchange in progress. The
folder is kept under [takes] max_files files and max_mb megabytes, the oldest takes going first.
Times are seconds on the daemon's clock (`clock.now()`); the player's notes come as the input hears
them (less the input latency), the model's as they are sent.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import mido

from daemon.echo import EchoFilter

log = logging.getLogger("antiphon.takes")

SPLIT_SILENCE_S = 60.0
TICKS_PER_BEAT = 480
PLAYER, MODEL = "player", "antiphon"
PATTERN = "take-*.mid"


class TakeEvent(NamedTuple):
    t: float  # seconds, now()'s clock
    track: str  # PLAYER or MODEL
    pitch: int
    velocity: int  # 0: note-off


def take_file(events: list[TakeEvent], bpm: float, meter: str) -> mido.MidiFile:
    """A type-1 file: tempo and meter, then the player's and the model's tracks, time 0 at the first
    event; a note still held at the end is released at the last event."""
    start, end = events[0].t, events[-1].t
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    top, bottom = meter.split("/")
    midi.tracks.append(mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0),
        mido.MetaMessage("time_signature", numerator=int(top), denominator=int(bottom), time=0),
    ]))
    per_tick = bpm / 60 * TICKS_PER_BEAT
    last = round((end - start) * per_tick)
    for name in (PLAYER, MODEL):
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=name, time=0)])
        # Offs before ons at one tick: a re-struck note stays two notes.
        timed = sorted(((round((e.t - start) * per_tick), e.velocity > 0, e.pitch, e.velocity) for e in events
                        if e.track == name), key=lambda e: e[:2])
        held: dict[int, int] = {}
        previous = 0
        for tick, on, pitch, velocity in timed:
            if not on and not held.get(pitch):
                continue  # the release of a note the take never saw begin
            held[pitch] = held.get(pitch, 0) + (1 if on else -1)
            track.append(mido.Message("note_on" if on else "note_off", note=pitch, velocity=velocity,
                                      time=tick - previous))
            previous = tick
        for pitch, count in held.items():
            for _ in range(count):
                track.append(mido.Message("note_off", note=pitch, velocity=0, time=last - previous))
                previous = last
        midi.tracks.append(track)
    return midi


def _write(path: Path, events: list[TakeEvent], bpm: float, meter: str) -> None:
    temporary = path.with_suffix(".tmp")
    try:
        take_file(events, bpm, meter).save(temporary)
        os.replace(temporary, path)
    except OSError as error:
        log.warning("take not written to %s: %s", path, error)


def prune(folder: Path, max_files: int, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest takes until at most max_files files and max_bytes bytes remain (never
    `keep`, the take being recorded). Returns what was deleted."""
    takes = sorted(folder.glob(PATTERN))
    sizes = {path: path.stat().st_size for path in takes}
    total, deleted = sum(sizes.values()), []
    for path in takes:
        if len(takes) - len(deleted) <= max_files and total <= max_bytes:
            break
        if path == keep:
            continue
        try:
            path.unlink()
        except OSError as error:
            log.warning("cannot delete the old take %s: %s", path, error)
            continue
        total -= sizes[path]
        deleted.append(path)
    return deleted


class TakeRecorder:
    """The takes of a running daemon (called on the event loop; files written on a thread)."""

    def __init__(self, folder: Path, max_files: int, max_bytes: int, echo_window_s: float) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.echoes = EchoFilter(echo_window_s)  # our answer coming back on the input is not the player
        self.events: list[TakeEvent] = []
        self.path: Path | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="takes")

    def player(self, message: mido.Message, t: float) -> None:
        """A note-on or note-off from the player's channel."""
        on = message.type == "note_on" and message.velocity > 0
        if self.echoes.note_on_is_echo(message.note, t) if on else self.echoes.note_off_is_echo(message.note):
            return
        self._add(TakeEvent(t, PLAYER, message.note, message.velocity if on else 0))

    def model(self, message: mido.Message, t: float, kept: bool = True) -> None:
        """A note-on or note-off the daemon sent; `kept` False for a click, which a take leaves out
        (it is the music, not the metronome) but whose echo must not pass for the player."""
        on = message.type == "note_on" and message.velocity > 0
        if on:
            self.echoes.sent(message.note, t)
        if kept:
            self._add(TakeEvent(t, MODEL, message.note, message.velocity if on else 0))

    def _add(self, event: TakeEvent) -> None:
        previous = self.path
        if self.events and event.t - self.events[-1].t >= SPLIT_SILENCE_S:
            self.path = None  # the previous take was written when its last exchange ended
            self.events = []
        if self.path is None:
            if event.velocity == 0:
                return  # a take begins with a note, not the release of one before it
            stem = time.strftime("take-%Y%m%d-%H%M%S")
            self.path, number = self.folder / f"{stem}.mid", 1
            while self.path.exists() or self.path == previous:  # two takes in one second
                number += 1
                self.path = self.folder / f"{stem}-{number}.mid"
            self._writer.submit(prune, self.folder, self.max_files, self.max_bytes, self.path)
        self.events.append(event)

    def flush(self, bpm: float, meter: str) -> Path | None:
        """Write the take so far (after an exchange); its path, or None before the first note."""
        if self.path is None or not self.events:
            return None
        self._writer.submit(_write, self.path, list(self.events), bpm, meter)
        return self.path

    def close(self, bpm: float, meter: str) -> None:
        """Write what is left and wait for the writer."""
        self.flush(bpm, meter)
        self._writer.shutdown(wait=True)


class TakeSummary(NamedTuple):
    path: Path
    seconds: float
    player_notes: int
    model_notes: int


def summarize(path: Path) -> TakeSummary:
    """Length and notes of a take file; ValueError naming the file when it cannot be read."""
    try:
        midi = mido.MidiFile(path)
    except (OSError, EOFError, ValueError, KeyError, IndexError) as error:
        raise ValueError(f"{path}: not a readable MIDI file ({error})") from None
    counts = {PLAYER: 0, MODEL: 0}
    for track in midi.tracks:
        if track.name in counts:
            counts[track.name] = sum(1 for m in track if m.type == "note_on" and m.velocity > 0)
    return TakeSummary(path, midi.length, counts[PLAYER], counts[MODEL])
