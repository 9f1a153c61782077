"""Reading a MIDI file in the daemon (`antiphon generate --prime`, the demo): every refusal
names the file and a reason, never an empty "()" (an EOFError has no message of its own)."""

from __future__ import annotations

import re
from pathlib import Path

import mido
import pytest

from daemon.midifile import MidiFileError, read_midi
from training.midi_loading import load_folder


def _good(path: Path) -> Path:
    midi = mido.MidiFile()
    track = mido.MidiTrack()
    midi.tracks.append(track)
    for pitch in (60, 62, 64, 65):
        track += [mido.Message("note_on", note=pitch, velocity=80, time=0),
                  mido.Message("note_off", note=pitch, velocity=0, time=480)]
    midi.save(path)
    return path


BROKEN = {
    "empty.mid": lambda good: b"",
    "truncated_half.mid": lambda good: good[: len(good) // 2],
    "header_only.mid": lambda good: good[:14],
    "garbage.mid": lambda good: b"\x00\x01 not MIDI at all" * 4,
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_every_refusal_gives_a_reason(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(BROKEN[name](_good(tmp_path / "good.mid").read_bytes()))
    with pytest.raises(MidiFileError) as refused:
        read_midi(path)
    reason = re.fullmatch(rf"{re.escape(str(path))}: not a readable MIDI file \((.+)\)", str(refused.value))
    assert reason and reason.group(1).strip("() "), str(refused.value)


def test_training_and_the_daemon_give_the_same_reasons(tmp_path: Path) -> None:
    good = _good(tmp_path / "good.mid").read_bytes()
    for name, make in BROKEN.items():
        (tmp_path / name).write_bytes(make(good))
    skipped = load_folder(tmp_path, report=None).skipped
    assert len(skipped) == len(BROKEN)
    for line in skipped:
        path = line.split(": not a readable MIDI file", 1)[0]
        with pytest.raises(MidiFileError) as refused:
            read_midi(path)
        assert str(refused.value) == line
