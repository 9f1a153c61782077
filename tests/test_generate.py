"""`antiphon generate` end to end: a real process writes a MIDI file and a piano roll."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest
import torch

from daemon.codec import Note
from daemon.midifile import read_midi, write_midi
from daemon.model import build_model, config_from_dict
from daemon.weights import save_weights

SMALL = {"kind": "transformer", "num_layers": 2, "d_model": 64, "num_heads": 4, "d_ff": 128}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    config = config_from_dict(SMALL)
    save_weights(folder, build_model(config), config, {"data": "random init for tests"})
    return folder


ROOT = Path(__file__).resolve().parents[1]


def generate(*args, cwd=None):
    command = [sys.executable, "-m", "daemon.cli", "generate", *map(str, args)]
    # This checkout's package from any working folder, as an installed `antiphon` finds its own.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_generate_unconditionally_writes_midi_and_png(weights, tmp_path):
    out = tmp_path / "out" / "song.mid"
    result = generate("--weights", weights, "--tokens", 120, "--seed", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tracks = [t.name for t in mido.MidiFile(out).tracks]
    assert tracks[1:] == ["generated"]


def test_generate_continues_a_primer_on_its_own_track(weights, tmp_path):
    primer = tmp_path / "primer.mid"
    write_midi(primer, [("phrase", [Note(4 * i, 60 + i, 4) for i in range(8)])])
    out = tmp_path / "continued.mid"
    result = generate("--weights", weights, "--prime", primer, "--bars", 2, "--seed", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    midi = mido.MidiFile(out)
    assert [t.name for t in midi.tracks[1:]] == ["primer", "generated"]
    notes, _ = read_midi(out)
    assert {(n.start, n.pitch) for n in notes} >= {(4 * i, 60 + i) for i in range(8)}


def test_same_seed_same_music(weights, tmp_path):
    for name in ("a", "b"):
        assert generate("--weights", weights, "--tokens", 60, "--seed", 9, "--out", tmp_path / f"{name}.mid").returncode == 0
    assert read_midi(tmp_path / "a.mid") == read_midi(tmp_path / "b.mid")


def test_bad_weights_and_bad_primer_are_named_without_a_traceback(weights, tmp_path):
    result = generate("--weights", tmp_path / "missing", "--out", tmp_path / "x.mid")
    assert result.returncode == 2 and "missing: not a weights folder" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd garbage")
    result = generate("--weights", weights, "--prime", bad, "--out", tmp_path / "y.mid")
    assert result.returncode == 2 and "bad.mid: not a readable MIDI file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_a_shipped_model_by_name_from_any_folder(kind, tmp_path):
    result = generate("--weights", kind, "--tokens", 24, "--seed", 2, "--out", "song.mid", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"from {ROOT / 'weights' / kind} ({kind})" in result.stdout
    assert (tmp_path / "song.mid").is_file()


def test_model_and_sampling_flags_are_the_daemons(tmp_path, capsys):
    from daemon.cli import build_parser, main
    from daemon.config import MODEL_AND_SAMPLING

    def flags(command):
        subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        parser = subcommands.choices[command]
        return {action.dest: (tuple(action.option_strings), action.help.split(" (")[0]) for action in parser._actions
                if action.dest.startswith("set:")}

    run = flags("run")
    wanted = {f"set:{section}:{name}" for section, name in MODEL_AND_SAMPLING}
    for command in ("generate", "demo"):
        assert flags(command) == {dest: run[dest] for dest in wanted}
    assert main(["generate", "--temperature", "9", "--out", str(tmp_path / "x.mid")]) == 2
    assert "--temperature: [jam] temperature = 9 is out of range; allowed: 0..5" in capsys.readouterr().err
