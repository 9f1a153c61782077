"""`antiphon demo`: the built-in phrase answered end to end, written to MIDI and PNG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest

from daemon.codec import Note
from daemon.midifile import read_midi

ANTIPHON = Path(sys.executable).with_name("antiphon")
ROOT = Path(__file__).resolve().parents[1]  # the demo run is this checkout's (not the installed one's)


def run_demo(tmp_path: Path, weights: Path, transport: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "demo"
    result = subprocess.run(
        [str(ANTIPHON), "demo", "--out", str(out), "--weights", str(weights), "--bpm", "240", "--seed", "1",
         "--transport", transport],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return result, out


def check_files(out: Path) -> None:
    midi = mido.MidiFile(out / "demo.mid")
    names = [track.name for track in midi.tracks]
    assert names[1:] == ["call", "answer"]
    call = [m for m in midi.tracks[1] if m.type == "note_on"]
    assert len(call) == 19  # the built-in phrase: two bars of melody over chords
    notes, _ = read_midi(out / "demo.mid")
    assert all(isinstance(n, Note) for n in notes)
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_over_the_in_process_port_pair(tmp_path, tiny_weights):
    result, out = run_demo(tmp_path, tiny_weights, "in-process")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "transport: an in-process port pair" in result.stdout
    assert "demo: answer of" in result.stdout
    check_files(out)


@pytest.mark.jack
def test_demo_over_jack(tmp_path, jack_server, tiny_weights):
    result, out = run_demo(tmp_path, tiny_weights, "auto")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "transport: the running JACK server" in result.stdout
    check_files(out)
