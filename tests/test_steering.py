"""Steering masks: answers sampled under them never leave the scale (beyond the allowance), the
register, the clash rule or the density cap; with everything off the mask is left alone."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.answer_loop import AnswerOptions, answer_mask, generate_answer
from daemon.codec import Note
from daemon.config import JamSettings
from daemon.grammar import HAVE_OFFSET, GrammarState
from daemon.keys import Key
from daemon.live_tokenizer import TokenStream
from daemon.music_figures import clash_count
from daemon.sampling import make_generator
from daemon.steering import (
    CHROMATIC_ALLOWANCE,
    PITCH_TOKENS,
    PITCHES,
    REGISTER_MARGIN,
    Steering,
    answer_options,
    narrowing,
    steer,
    steering_for,
)

BAR = 16
CALL = [Note(0, 60, 4), Note(4, 64, 4), Note(8, 67, 4), Note(12, 72, 4), Note(16, 71, 8), Note(24, 67, 8)]


class RandomLogits:
    """An engine whose logits are random: the masks' promises must hold for any logits."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.logits = self.rng.normal(0, 3, 153).astype(np.float32)

    def feed(self, tokens) -> np.ndarray:
        if tokens:
            self.logits = self.rng.normal(0, 3, 153).astype(np.float32)
        return self.logits


def answer(call, steering, seed, bars=2, temperature=1.5):
    """An answer to `call` by the daemon's answer loop, steered (or not, with None)."""
    stream = TokenStream(BAR)
    for note in call:
        stream.append(stream.note_tokens(note))
    narrowings = () if steering is None else (narrowing(steering, BAR),)
    options = AnswerOptions(temperature, 1.0, 16, narrowings)
    result = generate_answer(RandomLogits(seed + 1), stream, bars * BAR, 2 * bars * BAR, options, make_generator(seed))
    return [n for n, _ in result.notes], result.stream_tokens


calls = st.lists(st.builds(Note, st.integers(0, 31), st.integers(40, 90), st.integers(1, 8)), min_size=1, max_size=12,
                 unique_by=lambda n: (n.start, n.pitch)).map(sorted)


@settings(max_examples=60, deadline=None)
@given(calls, st.integers(0, 2**16))
def test_an_answer_stays_in_the_register_and_the_scale_with_the_allowance(call, seed):
    steering = steering_for(call, "auto", "follow", "free", "free", BAR, 2 * BAR)
    notes, _ = answer(call, steering, seed)
    low, high = min(n.pitch for n in call) - REGISTER_MARGIN, max(n.pitch for n in call) + REGISTER_MARGIN
    assert all(low <= n.pitch <= high for n in notes)
    if steering.scale is not None:
        chromatic = sum(not steering.scale[n.pitch - PITCHES[0]] for n in notes)
        assert chromatic <= CHROMATIC_ALLOWANCE * len(notes)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["C major", "F# minor", "Bb major"]))
def test_a_named_key_holds_every_answer(seed, key):
    steering = steering_for(CALL, key, "free", "free", "free", BAR, 2 * BAR)
    notes, _ = answer(CALL, steering, seed)
    assert sum(not steering.scale[n.pitch - PITCHES[0]] for n in notes) <= CHROMATIC_ALLOWANCE * len(notes)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16))
def test_no_semitone_clash_when_the_call_has_none(seed):
    steering = steering_for(CALL, "off", "free", "follow", "free", BAR, 2 * BAR)
    notes, _ = answer(CALL, steering, seed, temperature=3.0)
    assert clash_count(notes) == 0


def test_clashes_stay_allowed_when_the_call_has_them():
    assert steering_for([Note(0, 60, 4), Note(0, 61, 4)], "off", "free", "follow", "free", BAR, BAR) is None


def test_without_the_clash_rule_random_answers_do_clash():
    # The rule above is not vacuous: the same answers without it clash.
    assert sum(clash_count(answer(CALL, None, seed, temperature=3.0)[0]) for seed in range(20)) > 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16))
def test_density_caps_the_onsets_in_each_bar(seed):
    steering = steering_for(CALL, "off", "free", "free", 1.25, BAR, 2 * BAR)
    assert steering.onsets_per_bar == 4  # 3 notes a bar, times 1.25, rounded up
    notes, _ = answer(CALL, steering, seed, bars=4)
    for bar in range(4):
        assert sum(bar * BAR <= n.start - 4 * BAR < (bar + 1) * BAR for n in notes) <= 4


def test_everything_on_at_once_never_runs_out_of_tokens():
    # A one-note register on a scale with the clash rule: the onset check must keep the walk alive.
    steering = Steering(Key(0, False).scale[PITCHES % 12], PITCHES == 60, True, 2)
    for seed in range(30):
        notes, _ = answer(CALL, steering, seed, bars=2)
        assert all(n.pitch == 60 for n in notes)


def test_with_everything_off_there_is_no_steering():
    assert steering_for(CALL, "off", "free", "free", "free", BAR, 2 * BAR) is None


@pytest.mark.parametrize("seed", range(5))
def test_a_steering_that_asks_for_nothing_changes_no_token(seed):
    idle = Steering(None, np.ones(len(PITCHES), dtype=bool), False, 0)
    tokens = answer(CALL, idle, seed)[1]
    assert tokens and tokens == answer(CALL, None, seed)[1]


def test_the_settings_off_add_no_narrowing():
    off = replace(JamSettings(), key="off", register="free", clashes="free", density="free")
    assert answer_options(off, CALL, BAR, 2 * BAR) == AnswerOptions(off.temperature, off.top_p, off.max_note_steps)


def test_steering_narrows_the_mask_only_where_asked():
    steering = steering_for(CALL, "C major", "free", "free", "free", BAR, 2 * BAR)
    mask = answer_mask(GrammarState(HAVE_OFFSET, offset=3), 32, BAR, 32, 64, 16)
    before = mask.copy()
    steer(mask, GrammarState(HAVE_OFFSET, offset=3), 32, BAR, steering, [])
    pitches = PITCHES[mask[PITCH_TOKENS]]
    assert set(pitches % 12) == {0, 2, 4, 5, 7, 9, 11} and (mask <= before).all()
