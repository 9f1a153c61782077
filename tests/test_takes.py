"""Every take kept: two named tracks with the tempo, split after a minute's silence, the folder
bounded; and the real daemon writing one after an exchange, named by answer_finished."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import mido
import pytest
from daemon_process import Jam, answer_finished, answer_heard, start_jam, stop_jam
from fixtures_mqtt import Broker

from daemon.cli import main
from daemon.takes import MODEL, PLAYER, SPLIT_SILENCE_S, TakeEvent, TakeRecorder, prune, summarize, take_file


def note(kind: str, pitch: int, velocity: int = 90) -> mido.Message:
    return mido.Message(kind, note=pitch, velocity=velocity if kind == "note_on" else 0)


def notes_of(midi: mido.MidiFile, name: str) -> list[tuple[int, str, int]]:
    """(absolute tick, type, pitch) of the track named `name`."""
    (track,) = [t for t in midi.tracks if t.name == name]
    tick, found = 0, []
    for message in track:
        tick += message.time
        if message.type in ("note_on", "note_off"):
            found.append((tick, message.type, message.note))
    return found


def test_a_take_has_the_tempo_and_both_tracks_in_time() -> None:
    events = [TakeEvent(10.0, PLAYER, 60, 90), TakeEvent(10.5, PLAYER, 60, 0), TakeEvent(11.0, MODEL, 67, 80),
              TakeEvent(11.25, MODEL, 67, 0), TakeEvent(11.5, MODEL, 72, 80)]  # 72 is never released
    midi = take_file(events, 120.0, "3/4")
    assert midi.tracks[0][0].tempo == mido.bpm2tempo(120.0) and midi.tracks[0][1].numerator == 3
    assert notes_of(midi, PLAYER) == [(0, "note_on", 60), (480, "note_off", 60)]  # half a second: a beat at 120
    assert notes_of(midi, MODEL) == [(960, "note_on", 67), (1200, "note_off", 67), (1440, "note_on", 72),
                                     (1440, "note_off", 72)]


def test_the_recorder_splits_after_silence_skips_echoes_and_writes_on_flush(tmp_path: Path) -> None:
    recorder = TakeRecorder(tmp_path, 10, 10**6, echo_window_s=0.1)
    recorder.player(note("note_on", 60), 1.0)
    recorder.player(note("note_off", 60), 1.2)
    recorder.model(note("note_on", 64), 2.0)
    recorder.player(note("note_on", 64), 2.01)  # the synth's thru: our own note, not the player's
    recorder.player(note("note_off", 64), 2.2)
    recorder.model(note("note_off", 64), 2.5)
    first = recorder.flush(100.0, "4/4")
    recorder.player(note("note_on", 62), 2.5 + SPLIT_SILENCE_S)
    second = recorder.flush(100.0, "4/4")
    recorder.close(100.0, "4/4")
    assert first != second and first.exists() and second.exists()
    take = summarize(first)
    assert (round(take.seconds, 3), take.player_notes, take.model_notes) == (1.5, 1, 1)
    assert summarize(second).player_notes == 1 and summarize(second).model_notes == 0


def test_clicks_are_left_out_of_a_take_and_their_echoes_too(tmp_path: Path) -> None:
    recorder = TakeRecorder(tmp_path, 10, 10**6, echo_window_s=0.1)
    recorder.player(note("note_on", 60), 1.0)
    recorder.player(note("note_off", 60), 1.2)
    for beat in range(8):  # a metronome through half a minute of silence: the next note starts a new take
        recorder.model(note("note_on", 77), 1.5 + 4 * beat, kept=False)
        recorder.player(note("note_on", 77), 1.51 + 4 * beat)  # the synth's thru
        recorder.model(note("note_off", 77), 1.55 + 4 * beat, kept=False)
    first = recorder.flush(100.0, "4/4")
    recorder.player(note("note_on", 62), 1.2 + SPLIT_SILENCE_S)
    second = recorder.flush(100.0, "4/4")
    recorder.close(100.0, "4/4")
    assert first != second
    take = summarize(first)
    assert (round(take.seconds, 3), take.player_notes, take.model_notes) == (0.2, 1, 0)


def test_the_folder_is_bounded_oldest_first(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / f"take-2026120{index}-000000.mid").write_bytes(b"x" * 100)
    current = tmp_path / "take-20261204-000000.mid"
    assert [p.name[:13] for p in prune(tmp_path, max_files=3, max_bytes=10**6, keep=current)] == [
        "take-20261200", "take-20261201"]
    assert [p.name[:13] for p in prune(tmp_path, max_files=3, max_bytes=150, keep=current)] == [
        "take-20261202", "take-20261203"]
    assert [p.name for p in tmp_path.iterdir()] == [current.name]


@pytest.fixture
def jam(jack_server: object, mosquitto: Broker, tmp_path: Path) -> Iterator[Jam]:
    jam = start_jam(tmp_path, mosquitto)
    yield jam
    stop_jam(jam)


@pytest.mark.jack
@pytest.mark.mqtt
def test_one_exchange_is_written_with_both_tracks(jam: Jam, capsys: pytest.CaptureFixture) -> None:
    finished = answer_finished(jam, answer_heard(jam))
    take = Path(finished["take"])
    deadline = time.monotonic() + 10
    while not take.exists():  # written on the recorder's thread
        assert time.monotonic() < deadline, f"no take at {take}"
        time.sleep(0.05)
    midi = mido.MidiFile(take)
    assert midi.tracks[0][0].tempo == mido.bpm2tempo(240.0)  # the jam's tempo (daemon_sections)
    played = [pitch for _, kind, pitch in notes_of(midi, PLAYER) if kind == "note_on"]
    assert played == [60, 64, 67, 72]  # JackPeer.play_phrase
    answered = [pitch for _, kind, pitch in notes_of(midi, MODEL) if kind == "note_on"]
    assert len(answered) == finished["notes"] > 0
    assert main(["takes", "--takes-dir", str(take.parent)]) == 0
    listing = capsys.readouterr().out
    assert f"4 played  {len(answered):5d} answered  {take.name}" in listing
