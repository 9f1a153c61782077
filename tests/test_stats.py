"""`antiphon-train stats` on generated files and on the paper's reference data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_midi import write_broken, write_set, write_split

from training.cli import main
from training.dataset import windows_in
from training.midi_loading import load_midi
from training.stats import data_stats

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"


def test_counts_of_a_folder_match_its_files(tmp_path):
    paths = write_set(tmp_path, 3)
    write_broken(tmp_path / "zz broken.mid")
    stats = data_stats(tmp_path)
    loaded = [load_midi(p) for p in paths]
    assert stats["files"] == 3
    assert len(stats["skipped"]) == 1 and "zz broken.mid" in stats["skipped"][0]
    assert stats["tokens"] == sum(len(m.tokens) for m in loaded)
    assert stats["windows"] == sum(windows_in(len(m.tokens)) for m in loaded)
    assert stats["notes"]["kept"] == sum(len(m.notes) for m in loaded)
    merged = sum(m.dropped.get("merged", 0) for m in loaded)
    assert stats["notes"]["dropped"].get("merged", 0) == merged
    assert stats["windows_unmerged"] == sum(
        windows_in(len(m.tokens) + 3 * m.dropped.get("merged", 0)) for m in loaded
    )
    assert merged > 0  # random notes collide, so the unmerged count is really exercised
    assert stats["windows_unmerged"] > stats["windows"]
    assert "paper_windows" not in stats


def test_json_output_has_the_documented_keys_and_splits(tmp_path, capsys):
    write_split(tmp_path, train=2, test=1)
    assert main(["stats", str(tmp_path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {"files", "skipped", "notes", "tokens", "windows", "windows_unmerged"} <= set(stats)
    assert set(stats["splits"]) == {"train", "test"}
    assert stats["files"] == 3
    assert stats["windows"] == stats["splits"]["train"]["windows"] + stats["splits"]["test"]["windows"]


def test_text_output_names_every_count(tmp_path, capsys):
    write_set(tmp_path, 1)
    assert main(["stats", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for label in ("files read", "files skipped", "notes kept", "notes dropped", "tokens", "windows", "windows_unmerged"):
        assert label in text


def test_empty_folder_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no MIDI files" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def reference_stats():
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return data_stats(REFERENCE)


@pytest.mark.slow
@pytest.mark.parametrize("split, paper", [("train", 639_470), ("test", 70_248)])
def test_reference_windows_are_close_to_the_papers(reference_stats, split, paper):
    stats = reference_stats["splits"][split]
    assert stats["paper_windows"] == paper
    assert stats["files"] == {"train": 214, "test": 24}[split] and stats["skipped"] == []
    # counted as the paper's code did (merged duplicates kept): within 0.1%
    assert abs(stats["windows_unmerged"] - paper) / paper < 0.001
    # our codec's own windows: within 0.5%
    assert abs(stats["windows"] - paper) / paper < 0.005
    assert stats["windows"] < stats["windows_unmerged"]
