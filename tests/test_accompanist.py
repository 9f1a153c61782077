"""Accompaniment's token logic without a clock: the stream stays decodable, in time order, with
every player's note in it, whatever the model decided and however late the player's notes come."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.accompanist import Accompanist, pitch_range_narrowing
from daemon.answer_loop import AnswerOptions, compose_mask
from daemon.codec import DURATION_BASE, PITCH_BASE, Note, decode
from daemon.config import ConfigError, load_settings, parse_pitch_range
from daemon.engine import Engine
from daemon.grammar import HAVE_OFFSET, accepts, advance, walk
from daemon.live_tokenizer import TokenStream
from daemon.model import build_model, config_from_dict
from daemon.sampling import make_generator
from daemon.steering import accompaniment_options

BAR = 16
RANGE = (40, 59)


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(5)
    model = build_model(config_from_dict({"kind": "lstm", "embed_dim": 8, "hidden_size": 16, "fc1": 16, "fc2": 16}))
    with torch.no_grad():  # a model eager to play: make onsets likelier than silence
        model.head.bias[1:33] += 2.0
    return Engine(model.eval(), "cpu", precision="fp32", kernel="torch")


def accompanist(engine, seed, lookahead=4):
    stream = TokenStream(BAR, history=1 << 16)
    engine.reset(list(stream.tokens))
    return Accompanist(engine, stream, AnswerOptions(1.0, 1.0, 8), RANGE, make_generator(seed), 70)


# Player's notes in encoder order, each committed some steps after it starts (its release and
# more: arbitrary late arrivals), commits in order.
player_notes = st.lists(
    st.tuples(st.integers(0, 3), st.integers(21, 108), st.integers(1, 8), st.integers(0, 12)),
    min_size=1, max_size=25,
)


def timed(raw):
    notes, start, arrival, seen = [], 0, 0, set()
    for gap, pitch, duration, late in raw:
        start += gap
        if (start, pitch) in seen:
            continue
        seen.add((start, pitch))
        arrival = max(arrival, start + duration + late)
        notes.append((Note(start, pitch, duration, 90), arrival))
    notes.sort(key=lambda item: (item[0].start, item[0].pitch))
    arrivals = np.maximum.accumulate([a for _, a in notes])  # commits in encoder order
    return [(note, int(a)) for (note, _), a in zip(notes, arrivals)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=player_notes, lookahead=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_any_interleaving_leaves_a_decodable_stream_with_every_player_note(engine, raw, lookahead, seed):
    played = timed(raw)
    acc = accompanist(engine, seed)
    fixed, placed = [], []
    last = played[-1][1] + 2 * BAR
    pending = list(played)
    for step in range(last):
        while pending and pending[0][1] <= step:
            note, _ = pending.pop(0)
            acc.player_note(note)
            acc.settle()
            found = next(p.note for p in reversed(acc.placed) if p.player and p.note.pitch == note.pitch
                         and note.start in (p.note.start, p.moved_from))
            placed.append((note, found, step))
        acc.decide(step + lookahead, step + 1, end=last)
        fixed += acc.fix(step)
    acc.finish()
    tokens = list(acc.stream.tokens)
    assert accepts(tokens)
    assert list(acc.engine.context) == tokens[-len(acc.engine.context):]  # the engine holds the stream
    decoded = {(n.start, n.pitch, n.duration) for n in decode(tokens)}
    previous = -1
    for original, note, arrived in placed:
        assert (note.start, note.pitch, note.duration) in decoded
        assert note.pitch == original.pitch and original.start <= note.start
        if note.start != original.start:  # moved: only to where playback was when it arrived
            assert note.start <= max(arrived, previous) + 1  # (or just after a note moved there before it)
        previous = note.start
    # What sounded stays, unless the player struck it too (the same pitch at the same step): then
    # the player's note is the one in the stream.
    struck = {(n.start, n.pitch) for _, n, _ in placed}
    sounded = {(n.start, n.pitch, n.duration) for n in fixed if (n.start, n.pitch) not in struck}
    assert sounded <= decoded
    assert all(RANGE[0] <= n.pitch <= RANGE[1] for n in fixed)
    model = {note for note in decoded if note[:2] not in struck}
    assert model == sounded  # nothing unsounded is left


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=player_notes, lookahead=st.integers(1, 8), seed=st.integers(0, 2**16), onset_late=st.integers(0, 2),
       settle_every=st.integers(1, 6))
def test_notes_in_at_their_onsets_leave_a_decodable_stream_with_every_player_note_as_released(
        engine, raw, lookahead, seed, onset_late, settle_every):
    """Each key goes in at its onset (`onset_late` steps after it, as a loaded daemon may), with
    the model's guess of its length; its release, any number of steps later, is kept and puts the
    length right when the releases settle (every `settle_every` steps); what sounded stays, and
    the engine holds the stream."""
    played = timed(raw)
    acc = accompanist(engine, seed)
    fixed = []
    last = played[-1][1] + 2 * BAR
    onsets = sorted(played, key=lambda item: (item[0].start, item[0].pitch))
    releases = list(played)
    for step in range(last):
        while onsets and onsets[0][0].start + onset_late <= step:
            note, _ = onsets.pop(0)
            acc.player_onset(note.start, note.pitch, note.velocity)
        while releases and releases[0][1] <= step:
            acc.player_note(releases.pop(0)[0])
        if step % settle_every == 0:
            acc.settle()
        acc.decide(step + lookahead, step + 1, end=last)
        fixed += acc.fix(step)
    acc.finish()
    tokens = list(acc.stream.tokens)
    assert accepts(tokens)
    assert list(acc.engine.context) == tokens[-len(acc.engine.context):]
    decoded = {(n.start, n.pitch): n.duration for n in decode(tokens)}
    players = [p for p in acc.placed if p.player]
    assert len(players) == len(played)  # each note once: its release found its onset
    wrong = 0
    for note, _ in played:
        placed = next(p for p in players if p.note.pitch == note.pitch and note.start in (p.note.start, p.moved_from))
        assert decoded[(placed.note.start, note.pitch)] == placed.note.duration
        wrong += placed.note.start == note.start and placed.note.duration != note.duration
    assert wrong == acc.stats.unrevised  # a length is wrong only where the release came too late to revise
    for note in fixed:
        assert decoded.get((note.start, note.pitch)) == note.duration or any(
            p.note.start == note.start and p.note.pitch == note.pitch for p in players)  # or the player struck it too


def test_the_steering_offers_an_onset_only_where_a_pitch_in_the_range_can_follow():
    """As the daemon builds it (clashes followed), with 40 the only pitch in range and a model
    note at 41 sounding over steps 0-7: no onset before 8 (40 would clash, every other pitch is
    out of range), and after every onset offered some pitch is left."""
    jam = load_settings(None, {}).jam
    options, steering = accompaniment_options(jam, BAR, (40, 40))
    options = AnswerOptions(options.temperature, options.top_p, options.max_note_steps,
                            (pitch_range_narrowing(40, 40), steering.narrow))
    ringing = [Note(0, 41, 8, 70)]
    state = walk([0, 1 + 0, PITCH_BASE + 41 - 21, DURATION_BASE + 8 - 1])  # that note, in a bar at 0
    mask = compose_mask(state, 0, BAR, 1, 64, options, ringing)
    onsets = [int(t) for t in np.flatnonzero(mask[1:1 + BAR])]  # offsets (the slice starts at offset 0)
    assert onsets and min(onsets) == 8
    for offset in onsets:
        after = compose_mask(advance(state, 1 + offset), 0, BAR, 1, 64, options, ringing)
        assert after[PITCH_BASE:PITCH_BASE + 88].any()


def test_a_late_player_note_rolls_back_what_was_decided_and_the_engine_matches_a_fresh_one(engine):
    for seed in range(50):  # a seed whose model decided past where the player's note goes
        acc = accompanist(engine, seed)
        acc.decide(12, 0)
        acc.fix(1)
        if acc.decided and acc.decided[-1].note.start > 4:
            break
    assert acc.decided and acc.decided[-1].note.start > 4
    note = Note(4, 72, 2, 90)
    acc.player_note(note)
    acc.settle()
    assert [p.note for p in acc.placed if p.player] == [note]
    assert acc.stats.count == 1 and all(d.note.start <= 4 for d in acc.decided)
    fresh = Engine(engine.model, "cpu", precision="fp32", kernel="torch")
    fresh.reset(list(acc.stream.tokens))
    assert np.abs(fresh.logits - acc.engine.logits).max() <= 1e-5


def test_the_range_narrowing_masks_pitches_outside_and_unplayable_onsets():
    narrow = pitch_range_narrowing(40, 59)
    state = walk([0, 1 + 3])  # a note offset 3 chosen
    assert state.phase == HAVE_OFFSET
    mask = np.ones(153, dtype=bool)
    narrow(mask, state, 0, ())
    pitches = np.flatnonzero(mask[PITCH_BASE:PITCH_BASE + 88]) + 21
    assert pitches.min() == 40 and pitches.max() == 59
    after_high = advance(advance(state, PITCH_BASE + 80 - 21), 121)  # a player's note at 80, offset 3
    mask = np.ones(153, dtype=bool)
    narrow(mask, after_high, 0, ())
    assert not mask[1 + 3] and mask[1 + 4]


@pytest.mark.parametrize("text, expected", [("21-59", (21, 59)), (" 40-40 ", (40, 40))])
def test_range_parses(text, expected):
    assert parse_pitch_range(text) == expected


@pytest.mark.parametrize("text, message", [
    ("59-21", "not within 21-108 with LO <= HI"), ("10-50", "not within"), ("low", "not LO-HI"), ("21", "not LO-HI"),
])
def test_a_bad_range_is_named_with_its_flag(text, message):
    with pytest.raises(ConfigError, match=f"--accompany-range: \\[jam\\] accompany_range = '{text}' is {message}"):
        load_settings(None, {("jam", "accompany_range"): text})
