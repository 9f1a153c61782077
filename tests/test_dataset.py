"""Windows of 257 tokens at stride 1, transposition augmentation, and loading data folders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_midi import write_broken, write_set, write_split

from daemon.codec import PITCH_BASE, PITCH_MAX, PITCH_MIN, is_pitch, pitch_token
from training.dataset import (
    WINDOW,
    DataError,
    WindowDataset,
    load_train_test,
    load_windows,
    transpose_windows,
    windows_in,
)


def streams_of(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 153, size=n).tolist() for n in lengths]


def test_windows_per_stream_is_length_minus_256():
    assert [windows_in(n) for n in (0, 100, 256, 257, 258, 300)] == [0, 0, 0, 1, 2, 44]
    dataset = WindowDataset(streams_of([256, 257, 300, 10, 260]))
    assert len(dataset) == 0 + 1 + 44 + 0 + 4


def test_windows_are_the_stride_1_slices_of_each_stream_without_copies():
    streams = streams_of([300, 100, 270])
    dataset = WindowDataset(streams)
    expected = [s[i : i + WINDOW] for s in streams for i in range(windows_in(len(s)))]
    assert len(dataset) == len(expected) == 44 + 14
    got = dataset.windows(np.arange(len(dataset)))
    assert got.dtype == np.int64 and got.shape == (58, WINDOW)
    assert got.tolist() == expected
    # one int16 store of the tokens, windows are only start indices into it
    assert dataset.tokens.dtype == np.int16 and dataset.tokens.size == 670
    assert dataset.window_starts(np.array([0, 43, 44, 57])).tolist() == [0, 43, 400, 413]
    assert dataset.window_offsets(np.array([0, 43, 44, 57])).tolist() == [0, 43, 0, 13]
    assert dataset.window_streams(np.array([0, 43, 44, 57])).tolist() == [0, 0, 2, 2]
    # nothing is kept per window: the only arrays besides the tokens are per stream
    sizes = {name: value.size for name, value in vars(dataset).items() if isinstance(value, np.ndarray)}
    assert sizes == {"tokens": 670, "stream_starts": 3, "stream_lengths": 3, "first_window": 3}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=8))
def test_every_window_index_finds_its_stream_and_start_whatever_the_stream_lengths(lengths):
    dataset = WindowDataset([[0] * n for n in lengths])
    expected = [(s, start + i) for s, (start, n) in enumerate(zip(np.cumsum([0, *lengths[:-1]]), lengths))
                for i in range(windows_in(n))]
    indices = np.arange(len(dataset))
    assert len(dataset) == len(expected)
    assert list(zip(dataset.window_streams(indices).tolist(), dataset.window_starts(indices).tolist())) == expected


def test_batch_is_a_long_tensor_and_leaves_the_store_untouched():
    dataset = WindowDataset(streams_of([400]))
    before = dataset.tokens.copy()
    batch = dataset.batch([3, 0, 143], transpose_rng=np.random.default_rng(1))
    assert tuple(batch.shape) == (3, WINDOW) and str(batch.dtype) == "torch.int64"
    assert np.array_equal(dataset.tokens, before)


def pitch_window(pitches: list[int]) -> list[int]:
    """Offset, pitch, duration triples (offsets and durations are not pitch tokens)."""
    tokens = []
    for pitch in pitches:
        tokens += [1, pitch_token(pitch), PITCH_BASE + 88 + 3]
    return tokens


def test_transposition_moves_only_pitches_by_one_interval_per_window_within_the_piano():
    rng = np.random.default_rng(0)
    rows = np.array([pitch_window(list(rng.integers(30, 100, size=86))) for _ in range(200)], dtype=np.int64)[:, :WINDOW]
    original = rows.copy()
    transpose_windows(rows, np.random.default_rng(5))
    is_p = (original >= PITCH_BASE) & (original <= pitch_token(PITCH_MAX))
    assert np.array_equal(rows[~is_p], original[~is_p])
    shifts = set()
    for row, before, mask in zip(rows, original, is_p):
        deltas = np.unique(row[mask] - before[mask])
        assert deltas.size == 1  # the whole window moves together
        shifts.add(int(deltas[0]))
        pitches = row[mask] - PITCH_BASE + PITCH_MIN
        assert pitches.min() >= PITCH_MIN and pitches.max() <= PITCH_MAX
        assert all(is_pitch(int(t)) for t in row[mask])
    assert len(shifts) > 20 and min(shifts) < 0 < max(shifts)


def test_transposition_can_be_kept_within_a_few_semitones():
    rows = np.array([pitch_window([60 + i % 7 for i in range(86)])[:WINDOW]] * 400, dtype=np.int64)
    shifted = transpose_windows(rows.copy(), np.random.default_rng(2), max_interval=3)
    shifts = (shifted - rows)[:, 1]
    assert set(shifts.tolist()) == {-3, -2, -1, 0, 1, 2, 3}
    top = np.array([pitch_window([PITCH_MAX - 1] * 86)[:WINDOW]] * 100, dtype=np.int64)  # one semitone of room up
    assert set((transpose_windows(top.copy(), np.random.default_rng(4), 3) - top)[:, 1].tolist()) == {-3, -2, -1, 0, 1}


def test_transposition_of_a_window_spanning_the_whole_piano_is_zero_and_is_seeded():
    full = np.array([pitch_window([PITCH_MIN, PITCH_MAX] * 43)[:WINDOW]], dtype=np.int64)
    assert np.array_equal(transpose_windows(full.copy(), np.random.default_rng(3)), full)
    rows = np.array([pitch_window([60 + i % 5 for i in range(86)])[:WINDOW]] * 4, dtype=np.int64)
    first = transpose_windows(rows.copy(), np.random.default_rng(9))
    again = transpose_windows(rows.copy(), np.random.default_rng(9))
    assert np.array_equal(first, again)


def test_a_window_without_pitches_is_left_alone():
    bars = np.zeros((1, WINDOW), dtype=np.int64)
    assert np.array_equal(transpose_windows(bars.copy(), np.random.default_rng(0)), bars)


def test_train_and_test_subfolders(tmp_path):
    write_split(tmp_path, train=3, test=2)
    train, test = load_train_test(tmp_path, report=None)
    assert (len(train.files), len(test.files)) == (3, 2)
    assert train.folder == tmp_path / "train" and len(train.windows) > 0
    assert load_windows(tmp_path, report=None).folder == tmp_path / "test"


def test_one_folder_is_split_by_file_with_a_seeded_ratio(tmp_path):
    write_set(tmp_path, 10)
    train, test = load_train_test(tmp_path, test_ratio=0.3, seed=4, report=None)
    assert (len(train.files), len(test.files)) == (7, 3)
    assert not set(train.files) & set(test.files)
    again_train, again_test = load_train_test(tmp_path, test_ratio=0.3, seed=4, report=None)
    assert again_test.files == test.files
    other = {tuple(load_train_test(tmp_path, test_ratio=0.3, seed=s, report=None)[1].files) for s in range(5)}
    assert len(other) > 1


def test_an_unreadable_file_is_skipped_with_a_line_and_counted(tmp_path):
    write_set(tmp_path / "train", 2)
    write_set(tmp_path / "test", 1)
    write_broken(tmp_path / "train" / "broken.mid")
    lines = []
    train, _ = load_train_test(tmp_path, report=lines.append)
    assert len(train.files) == 2 and len(train.skipped) == 1
    assert len(lines) == 1 and "broken.mid" in lines[0] and "not a readable MIDI file" in lines[0]


def test_empty_folder_and_all_broken_folder_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MIDI files"):
        load_train_test(tmp_path / "empty", report=None)
    write_broken(tmp_path / "bad" / "a.mid")
    write_broken(tmp_path / "bad" / "b.mid")
    with pytest.raises(DataError, match="all 2 MIDI files failed"):
        load_windows(tmp_path / "bad", report=None)
    with pytest.raises(DataError, match="not a folder"):
        load_windows(tmp_path / "missing", report=None)


def test_files_too_short_for_a_window_are_a_clear_error(tmp_path):
    write_set(tmp_path, 2, bars=2)
    with pytest.raises(DataError, match="257 tokens"):
        load_windows(tmp_path, report=None)
