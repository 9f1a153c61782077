"""The token cache: a folder is parsed once, changed files are re-read, damaged entries re-made,
and processes filling it at once leave one whole entry per file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from tiny_midi import write_broken, write_set

from training.folder_reader import PARALLEL_FROM, read_folder
from training.midi_loading import load_midi
from training.token_cache import TokenCache, content_key


def quiet(lines: list[str] | None = None):
    return (lambda line: None) if lines is None else lines.append


def tokens_of(result) -> dict[str, list[int]]:
    return {item.path.name: item.tokens.tolist() for item in result.files}


def entries(cache: TokenCache) -> list[Path]:
    return sorted(p for p in cache.folder.rglob("*") if p.is_file())


def test_a_second_read_parses_nothing_and_gives_what_the_parser_gives(tmp_path):
    paths = write_set(tmp_path / "data", PARALLEL_FROM)
    write_broken(tmp_path / "data" / "zz broken.mid")
    cache = TokenCache(tmp_path / "cache")
    first_lines, second_lines = [], []
    cold = read_folder(tmp_path / "data", quiet(first_lines), cache, workers=2)  # parsed in two worker processes
    assert (cold.parsed, cold.cached) == (PARALLEL_FROM + 1, 0)
    warm = read_folder(tmp_path / "data", quiet(second_lines), cache)
    assert (warm.parsed, warm.cached) == (0, PARALLEL_FROM + 1)
    expected = {p.name: load_midi(p).tokens for p in paths}
    assert tokens_of(cold) == tokens_of(warm) == expected
    assert [item.notes for item in warm.files] == [len(load_midi(p).notes) for p in paths]
    assert [item.dropped for item in warm.files] == [load_midi(p).dropped for p in paths]
    assert warm.files[0].tokens.dtype == np.int16
    # the broken file is remembered as broken, and reported each time under its own name
    assert first_lines == second_lines and len(warm.skipped) == 1
    assert warm.skipped[0].startswith(str(tmp_path / "data" / "zz broken.mid") + ": not a readable MIDI file")
    assert len(entries(cache)) == PARALLEL_FROM + 1


def test_a_changed_file_is_re_read_and_a_deleted_one_is_gone(tmp_path):
    paths = write_set(tmp_path / "data", 3)
    cache = TokenCache(tmp_path / "cache")
    read_folder(tmp_path / "data", quiet(), cache)
    write_set(tmp_path / "other", 1, bars=5, seed=9)
    paths[1].write_bytes((tmp_path / "other" / "song 00.mid").read_bytes())
    changed = read_folder(tmp_path / "data", quiet(), cache)
    assert (changed.parsed, changed.cached) == (1, 2)
    assert tokens_of(changed)[paths[1].name] == load_midi(paths[1]).tokens
    paths[0].unlink()
    gone = read_folder(tmp_path / "data", quiet(), cache)
    assert (gone.parsed, gone.cached) == (0, 2) and paths[0].name not in tokens_of(gone)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_entry_is_re_made_with_a_warning(tmp_path, damage):
    paths = write_set(tmp_path / "data", 2)
    cache = TokenCache(tmp_path / "cache")
    read_folder(tmp_path / "data", quiet(), cache)
    entry = cache.path_of(content_key(paths[0].read_bytes()))
    data = entry.read_bytes()
    entry.write_bytes({"truncate": data[:-7], "flip": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
                       "garbage": b"\x00garbage"}[damage])
    lines = []
    again = read_folder(tmp_path / "data", quiet(lines), cache)
    assert (again.parsed, again.cached) == (1, 1)
    assert len(lines) == 1 and lines[0].startswith(f"warning: damaged token cache entry, re-reading {paths[0]}")
    assert str(entry) in lines[0]
    assert tokens_of(again)[paths[0].name] == load_midi(paths[0]).tokens
    lines.clear()
    healed = read_folder(tmp_path / "data", quiet(lines), cache)
    assert (healed.parsed, lines) == (0, [])


def fill(folder: str, cache: str, start, results) -> None:
    start.wait()
    read = read_folder(folder, None, TokenCache(cache), workers=1)
    results.put((read.parsed, {item.path.name: item.tokens.tolist() for item in read.files}))


def test_two_processes_filling_the_cache_at_once_leave_one_whole_entry_per_file(tmp_path):
    paths = write_set(tmp_path / "data", 24, bars=4)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=fill, args=(str(tmp_path / "data"), str(tmp_path / "cache"), start, results))
                 for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    expected = {p.name: load_midi(p).tokens for p in paths}
    assert all(tokens == expected for _, tokens in outcomes)
    assert sum(parsed for parsed, _ in outcomes) >= len(paths)  # both started cold: each parsed what it did not find
    cache = TokenCache(tmp_path / "cache")
    assert [p.name for p in entries(cache)] == sorted(f"{content_key(p.read_bytes())}.tokens" for p in paths)
    assert tokens_of(read_folder(tmp_path / "data", None, cache)) == expected
