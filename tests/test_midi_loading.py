"""The MIDI loader on files written here with mido (no binary fixtures), and on the reference data."""

from __future__ import annotations

from pathlib import Path

import mido
import pytest

from daemon.codec import Note, bar_times, decode
from daemon.grammar import accepts
from daemon.midifile import bar_starts_from
from training.midi_loading import (
    FolderSummary,
    LoadedMidi,
    MidiLoadError,
    load_folder,
    load_midi,
    midi_files,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"

TPQ = 480  # ticks per quarter in most files below: 120 ticks per 16th step


def note(pitch: int, start: int, length: int, channel: int = 0, velocity: int = 80) -> list[tuple[int, mido.Message]]:
    """A note as (absolute tick, message) pairs."""
    return [
        (start, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)),
        (start + length, mido.Message("note_off", note=pitch, velocity=0, channel=channel)),
    ]


def meter(tick: int, numerator: int, denominator: int) -> list[tuple[int, mido.MetaMessage]]:
    return [(tick, mido.MetaMessage("time_signature", numerator=numerator, denominator=denominator))]


def tempo(tick: int, bpm: float) -> list[tuple[int, mido.MetaMessage]]:
    return [(tick, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))]


def track(*events: list[tuple[int, mido.Message]], end: int | None = None) -> mido.MidiTrack:
    """A track from absolute-time events (note-offs sort before note-ons at the same tick)."""
    timed = sorted((e for group in events for e in group), key=lambda e: (e[0], e[1].type == "note_on"))
    result, now = mido.MidiTrack(), 0
    for tick, message in timed:
        result.append(message.copy(time=tick - now))
        now = tick
    result.append(mido.MetaMessage("end_of_track", time=max(0, (end or now) - now)))
    return result


def write(path: Path, *tracks: mido.MidiTrack, ticks_per_beat: int = TPQ, type: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mido.MidiFile(type=type, ticks_per_beat=ticks_per_beat, tracks=list(tracks)).save(path)
    return path


def steps(loaded: LoadedMidi) -> list[tuple[int, int, int]]:
    return [(n.start, n.pitch, n.duration) for n in loaded.notes]


def assert_consistent(loaded: LoadedMidi) -> None:
    """What every loaded file must satisfy: its stream is grammatical and holds its notes and bars."""
    assert accepts(loaded.tokens)
    assert [(n.start, n.pitch, n.duration) for n in decode(loaded.tokens)] == steps(loaded)
    assert set(loaded.bar_starts) - {0} <= set(bar_times(loaded.tokens))


# --- notes on the grid --------------------------------------------------------------------------


def test_notes_land_on_16th_steps(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mid", track(note(60, 0, 480, velocity=100), note(64, 480, 240), note(67, 1920, 2880)))
    loaded = load_midi(path)
    assert loaded.path == path
    assert loaded.notes == [Note(0, 60, 4, 100), Note(4, 64, 2, 80), Note(16, 67, 24, 80)]
    assert loaded.dropped == {}
    assert_consistent(loaded)


def test_notes_whose_start_and_end_round_together_are_dropped(tmp_path: Path) -> None:
    # Start and end round to the grid as muspy's adjust_resolution (the paper's loader) rounds
    # them: 50 ticks (0.42 step) across a rounding boundary keep one step; 108 ticks (0.9 step)
    # that start and end in the same rounding cell round to duration 0 and are dropped.
    path = write(tmp_path / "short.mid", track(note(60, 40, 50), note(62, 666, 108)))
    loaded = load_midi(path)
    assert steps(loaded) == [(0, 60, 1)]
    assert loaded.dropped == {"too_short": 1}


def test_pitches_outside_the_piano_are_dropped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "range.mid", track(note(10, 0, 480), note(21, 0, 480), note(108, 0, 480), note(120, 0, 480)))
    loaded = load_midi(path)
    assert steps(loaded) == [(0, 21, 4), (0, 108, 4)]
    assert loaded.dropped == {"out_of_range": 2}


def test_drum_tracks_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path / "drums.mid",
        track(note(60, 0, 480)),
        track(note(36, 0, 480, channel=9), note(38, 480, 480, channel=9)),
        track(note(62, 480, 480, channel=3), note(42, 960, 120, channel=9)),
    )
    assert steps(load_midi(path)) == [(0, 60, 4), (4, 62, 4)]


# --- bar lines --------------------------------------------------------------------------------


def test_4_4_bars_when_the_file_has_no_time_signature(tmp_path: Path) -> None:
    loaded = load_midi(write(tmp_path / "plain.mid", track(note(60, 0, 480), note(62, 40 * 120, 480))))
    assert loaded.bar_starts == [0, 16, 32]
    assert bar_times(loaded.tokens) == [0, 16, 32]
    assert_consistent(loaded)


def test_a_3_4_file_has_bars_every_12_steps(tmp_path: Path) -> None:
    loaded = load_midi(write(tmp_path / "waltz.mid", track(meter(0, 3, 4), note(60, 0, 480), note(62, 37 * 120, 480))))
    assert loaded.bar_starts == [0, 12, 24, 36]
    assert bar_times(loaded.tokens) == [0, 12, 24, 36]
    assert_consistent(loaded)


def test_a_meter_change_mid_file_moves_the_bar_lines(tmp_path: Path) -> None:
    # 4/4 for two bars, then 6/8 (12 steps) from step 32, set in a conductor track apart from the notes.
    conductor = track(meter(0, 4, 4), meter(32 * 120, 6, 8))
    notes = track(note(60, 0, 480), note(64, 33 * 120, 480), note(67, 57 * 120, 480))
    loaded = load_midi(write(tmp_path / "change.mid", conductor, notes))
    assert loaded.bar_starts == [0, 16, 32, 44, 56]
    assert steps(loaded) == [(0, 60, 4), (33, 64, 4), (57, 67, 4)]
    assert_consistent(loaded)


def test_bar_starts_from_signatures() -> None:
    assert bar_starts_from([], 40) == [0, 16, 32]
    assert bar_starts_from([(8, 2, 4)], 24) == [0, 8, 16, 24]  # 4/4 until the first signature
    assert bar_starts_from([(0, 7, 8)], 30) == [0, 14, 28]
    assert bar_starts_from([(0, 0, 4), (0, 3, 4)], 24) == [0, 12, 24]  # a 0/4 signature is ignored


# --- folders and names --------------------------------------------------------------------------

ODD_NAMES = [
    "plain.mid",
    "with space.mid",
    "Tidus' Theme.mid",
    "one, two, three.mid",
    "Hurry!.mid",
    "sub folder/deeper/Rikku's Theme, Part 2!.MID",
    "other/song.midi",
]


def test_a_folder_loads_recursively_whatever_the_file_names(tmp_path: Path) -> None:
    for pitch, name in enumerate(ODD_NAMES, start=60):
        write(tmp_path / name, track(note(pitch, 0, 480)))
    (tmp_path / "notes.txt").write_text("not music")
    lines: list[str] = []
    summary = load_folder(tmp_path, report=lines.append)
    assert lines == [] and summary.skipped == []
    assert sorted(item.path for item in summary.loaded) == sorted(tmp_path / name for name in ODD_NAMES)
    assert sorted(item.notes[0].pitch for item in summary.loaded) == list(range(60, 60 + len(ODD_NAMES)))
    assert len(summary.streams) == len(ODD_NAMES) and all(accepts(s) for s in summary.streams)


def test_unreadable_files_are_skipped_with_one_line_each(tmp_path: Path) -> None:
    good = write(tmp_path / "good.mid", track(note(60, 0, 480), note(62, 480, 480)))
    write(tmp_path / "x.mid" / "inside.mid", track(note(64, 0, 480)))  # a folder named x.mid is walked, not read
    broken = {
        "garbage.mid": b"\x00\x01this is not a MIDI file at all" * 8,
        "truncated.mid": good.read_bytes()[:30],
        "empty.mid": b"",
    }
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
    lines: list[str] = []
    summary = load_folder(tmp_path, report=lines.append)
    assert sorted(item.path.name for item in summary.loaded) == ["good.mid", "inside.mid"]
    assert len(summary.skipped) == 3 and len(lines) == 3
    for name in broken:
        (line,) = [line for line in lines if str(tmp_path / name) in line]
        assert "\n" not in line
        assert line.startswith("skipped ") and "not a readable MIDI file (" in line
    assert any("MThd not found" in line for line in lines)
    assert sum("ends early" in line for line in lines) == 2


def test_load_midi_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    missing = tmp_path / "it's missing!.mid"
    with pytest.raises(MidiLoadError, match="it's missing!.mid: not a readable MIDI file"):
        load_midi(missing)


def test_a_path_that_is_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MidiLoadError, match="not a folder"):
        midi_files(tmp_path / "nowhere")


# --- odd but valid files ----------------------------------------------------------------------


def test_a_file_with_no_notes(tmp_path: Path) -> None:
    loaded = load_midi(write(tmp_path / "silent.mid", track(meter(0, 3, 4), tempo(0, 90), end=4 * TPQ)))
    assert loaded.notes == [] and loaded.bar_starts == [0] and loaded.tokens == [0]
    assert_consistent(loaded)


def test_tempo_changes_do_not_move_notes_off_the_beat_grid(tmp_path: Path) -> None:
    path = write(
        tmp_path / "tempo.mid",
        track(tempo(0, 60), tempo(480, 200), tempo(1000, 33.3), note(60, 0, 480), note(62, 1920, 480)),
    )
    loaded = load_midi(path)
    assert steps(loaded) == [(0, 60, 4), (16, 62, 4)]
    assert_consistent(loaded)


def test_a_note_never_released_lasts_to_the_end_of_its_track(tmp_path: Path) -> None:
    hanging = [(480, mido.Message("note_on", note=67, velocity=80))]
    loaded = load_midi(write(tmp_path / "hanging.mid", track(note(60, 0, 480), hanging, end=8 * TPQ)))
    assert steps(loaded) == [(0, 60, 4), (4, 67, 28)]
    assert_consistent(loaded)


def test_a_note_never_released_at_the_track_end_is_dropped(tmp_path: Path) -> None:
    hanging = [(480, mido.Message("note_on", note=67, velocity=80))]
    loaded = load_midi(write(tmp_path / "cut.mid", track(note(60, 0, 480), hanging)))
    assert steps(loaded) == [(0, 60, 4)]
    assert loaded.dropped == {"too_short": 1}


@pytest.mark.parametrize("ticks_per_beat", [1, 3, 32767])
def test_extreme_ticks_per_beat(tmp_path: Path, ticks_per_beat: int) -> None:
    q = ticks_per_beat
    path = write(
        tmp_path / f"tpq{q}.mid", track(meter(0, 3, 4), note(60, 0, q), note(62, 3 * q, 2 * q)), ticks_per_beat=q
    )
    loaded = load_midi(path)
    assert steps(loaded) == [(0, 60, 4), (12, 62, 8)]
    assert loaded.bar_starts == [0, 12]
    assert_consistent(loaded)


def test_a_type_0_file(tmp_path: Path) -> None:
    one = track(meter(0, 2, 4), note(60, 0, 480), note(40, 480, 480, channel=9), note(50, 960, 480, channel=5))
    loaded = load_midi(write(tmp_path / "type0.mid", one, type=0))
    assert steps(loaded) == [(0, 60, 4), (8, 50, 4)]
    assert loaded.bar_starts == [0, 8]
    assert_consistent(loaded)


def test_a_type_2_file_plays_its_patterns_one_after_another(tmp_path: Path) -> None:
    first = track(note(60, 0, 480), end=4 * TPQ)  # a one-bar pattern
    second = track(note(64, 0, 480), note(67, 480, 480), end=4 * TPQ)
    loaded = load_midi(write(tmp_path / "type2.mid", first, second, type=2))
    assert steps(loaded) == [(0, 60, 4), (16, 64, 4), (20, 67, 4)]
    assert loaded.bar_starts == [0, 16]
    assert_consistent(loaded)


# --- the reference data -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], FolderSummary]:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (shared/ is expected beside the repository)")
    lines: list[str] = []
    return lines, load_folder(REFERENCE, report=lines.append)


@pytest.mark.slow
def test_every_reference_file_loads_into_an_accepted_stream(reference: tuple[list[str], FolderSummary]) -> None:
    lines, summary = reference
    assert lines == [] and summary.skipped == []
    folders = sorted(item.path.parent.name for item in summary.loaded)
    assert (folders.count("train"), folders.count("test")) == (214, 24)
    for item in summary.loaded:
        assert item.notes, item.path
        assert_consistent(item)
