"""The live tokenizer gives exactly the offline encoder's tokens for the same performance."""

from __future__ import annotations

from pathlib import Path

import mido
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from daemon.codec import BAR, Note, encode, token_names
from daemon.grammar import accepts
from daemon.live_tokenizer import LiveTokenizer, TokenStream
from training.midi_loading import load_midi

TICKS_PER_BEAT = 480
TICKS_PER_STEP = TICKS_PER_BEAT // 4
HALF_STEP = TICKS_PER_STEP // 2


def write_performance(path: Path, events: list[tuple[int, str, int, int]], bpm: float) -> None:
    """(tick, 'on'|'off'|'pedal', pitch or pedal value, velocity) as a one-track MIDI file."""
    midi = mido.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    now = 0
    for tick, kind, value, velocity in events:
        if kind == "on":
            message = mido.Message("note_on", note=value, velocity=velocity, time=tick - now)
        elif kind == "off_zero":  # a note-on with velocity 0 is a note-off
            message = mido.Message("note_on", note=value, velocity=0, time=tick - now)
        else:
            message = mido.Message("note_off", note=value, velocity=64, time=tick - now)
        track.append(message)
        now = tick
    midi.tracks.append(track)
    midi.save(path)


def live_tokens(events: list[tuple[int, str, int, int]], bpm: float, steps_per_bar: int = 16) -> list[int]:
    """Feed the events as a player would, in seconds, committing after every event."""
    seconds_per_tick = 60.0 / bpm / TICKS_PER_BEAT
    step = 60.0 / bpm / 4
    tokenizer, stream = LiveTokenizer(), TokenStream(steps_per_bar)
    position = 0.0
    for tick, kind, value, velocity in events:
        position = tick * seconds_per_tick / step
        if kind == "on":
            tokenizer.note_on(value, velocity, position)
        elif kind == "pedal":
            tokenizer.pedal(value >= 64, position)
        else:
            tokenizer.note_off(value, position)
        for note in tokenizer.commit(position):
            stream.append(stream.note_tokens(note))
    for note in tokenizer.commit(position + 1):
        stream.append(stream.note_tokens(note))
    return list(stream.tokens)


@st.composite
def performances(draw) -> list[tuple[int, str, int, int]]:
    """Humanised notes: grid positions pushed off the grid by up to almost half a step either way."""
    count = draw(st.integers(1, 40))
    events = []
    for index in range(count):
        start_step = 0 if index == 0 else draw(st.integers(0, 80))
        length_steps = draw(st.integers(0, 40))
        pitch = draw(st.integers(15, 112))  # a few outside the piano range, dropped on both sides
        velocity = draw(st.integers(1, 127))
        on = max(0, start_step * TICKS_PER_STEP + (0 if index == 0 else draw(st.integers(-59, 59))))
        off = max(on + draw(st.integers(1, 40)), (start_step + length_steps) * TICKS_PER_STEP
                  + draw(st.integers(-59, 59)))
        events.append((on, "on", pitch, velocity))
        events.append((off, draw(st.sampled_from(["off", "off_zero"])), pitch, 0))
    # Exact half steps are ties that a live performance never hits; keep the comparison exact.
    assume(all(tick % TICKS_PER_STEP != HALF_STEP for tick, *_ in events))
    return sorted(events, key=lambda e: (e[0], e[1] == "on"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(performance=performances(), bpm=st.sampled_from([72.0, 100.0, 133.0]))
def test_live_tokens_equal_offline_tokens(tmp_path, performance, bpm):
    path = tmp_path / "performance.mid"
    write_performance(path, performance, bpm)
    offline = load_midi(path).tokens
    live = live_tokens(performance, bpm)
    assert token_names(live) == token_names(offline)
    assert accepts(live)


def test_sustain_pedal_holds_notes_until_release(tmp_path):
    # Keys released at step 2 and 4 while the pedal is down until step 12: both end at 12.
    steps = TICKS_PER_STEP
    played = [(0, "on", 60, 80), (0, "pedal", 127, 0), (2 * steps, "off", 60, 0), (4 * steps, "on", 64, 80),
              (6 * steps, "off", 64, 0), (12 * steps, "pedal", 0, 0)]
    live = live_tokens(played, 120.0)
    assert live == encode([Note(0, 60, 12), Note(4, 64, 8)], [0])


def test_restruck_key_under_the_pedal_ends_the_held_note():
    tokenizer = LiveTokenizer()
    tokenizer.pedal(True, 0.0)
    tokenizer.note_on(60, 80, 0.0)
    tokenizer.note_off(60, 1.0)
    tokenizer.note_on(60, 80, 4.0)
    tokenizer.note_off(60, 5.0)
    tokenizer.pedal(False, 8.0)
    assert tokenizer.commit(9.0) == [Note(0, 60, 4, 80), Note(4, 60, 4, 80)]


def test_held_note_is_committed_at_the_32_step_cap_before_release():
    tokenizer = LiveTokenizer()
    tokenizer.note_on(48, 70, 0.0)
    assert tokenizer.commit(31.4) == []
    assert tokenizer.commit(31.6) == [Note(0, 48, 32, 70)]
    tokenizer.note_off(48, 40.2)
    assert tokenizer.commit(41.0) == [Note(32, 48, 8, 70)]


def test_notes_are_committed_while_the_player_plays():
    # Prefill: a finished note goes out as soon as no onset can still round before it,
    # even though a later note is still held.
    tokenizer = LiveTokenizer()
    tokenizer.note_on(60, 80, 0.1)
    tokenizer.note_off(60, 1.9)
    tokenizer.note_on(62, 80, 2.0)
    assert tokenizer.commit(2.0) == [Note(0, 60, 2, 80)]
    assert tokenizer.commit(3.0) == []  # 62 is still held
    assert tokenizer.pending == 0 and tokenizer.keys_down == 1


def test_a_held_note_holds_back_later_notes_to_keep_encoder_order():
    tokenizer = LiveTokenizer()
    tokenizer.note_on(48, 80, 0.0)
    tokenizer.note_on(72, 80, 1.0)
    tokenizer.note_off(72, 2.0)
    assert tokenizer.commit(4.0) == []
    tokenizer.note_off(48, 8.0)
    assert tokenizer.commit(8.0) == [Note(0, 48, 8, 80), Note(1, 72, 1, 80)]


def test_stream_continues_across_phrases_with_bar_lines():
    stream = TokenStream(16)
    stream.append(stream.note_tokens(Note(2, 60, 4)))
    stream.append(stream.bar_tokens_to(32))
    assert stream.last_bar == 32
    assert not stream.can_take(Note(20, 60, 1))
    assert stream.can_take(Note(32, 60, 1))
    tokens = stream.note_tokens(Note(35, 62, 2))
    stream.append(tokens)
    assert list(stream.tokens)[0] == BAR
    assert token_names(tokens) == ["Offset_3", "Pitch_62", "Duration_2"]
    assert accepts(stream.tokens)


@pytest.mark.parametrize("steps_per_bar", [12, 16, 28])
def test_stream_bar_lines_follow_the_meter(steps_per_bar):
    stream = TokenStream(steps_per_bar)
    note = Note(steps_per_bar * 2 + 1, 60, 1)
    assert stream.note_tokens(note) == encode([note], range(0, note.start + 1, steps_per_bar))[1:]


def test_a_key_down_past_the_cap_stops_holding_back_the_hand_over():
    tokenizer = LiveTokenizer()
    tokenizer.note_on(48, 80, 0.0)
    tokenizer.note_on(60, 80, 20.0)
    assert tokenizer.holding(31.0) == 2
    assert tokenizer.holding(32.0) == 1  # 48 has been down for 32 steps
    tokenizer.release_keys(40.0)
    assert tokenizer.keys_down == 0
    assert tokenizer.commit(41.0) == [Note(0, 48, 32, 80), Note(20, 60, 20, 80), Note(32, 48, 8, 80)]
