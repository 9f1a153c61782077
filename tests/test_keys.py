"""Key finding and scales: scales of known keys, Krumhansl–Schmuckler on plain scale phrases."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.codec import Note
from daemon.keys import Key, find_key, in_scale, parse_key


def scale_phrase(tonic_pitch: int, steps: tuple[int, ...]) -> list[Note]:
    """The scale up from the tonic, the tonic and fifth held longest (as tunes dwell on them)."""
    notes = [Note(4 * i, tonic_pitch + step, 4) for i, step in enumerate(steps)]
    return notes + [Note(40, tonic_pitch, 8), Note(48, tonic_pitch + 7, 4), Note(52, tonic_pitch, 8)]


def test_c_major_scale_is_the_white_keys():
    assert [pc for pc in range(12) if Key(0, False).scale[pc]] == [0, 2, 4, 5, 7, 9, 11]


def test_a_minor_scale_is_natural_minor_with_the_leading_tone():
    assert [pc for pc in range(12) if Key(9, True).scale[pc]] == [0, 2, 4, 5, 7, 8, 9, 11]


@pytest.mark.parametrize("text, key", [("C", Key(0, False)), ("C major", Key(0, False)), ("F# minor", Key(6, True)),
                                       ("Bbm", Key(10, True)), ("a min", Key(9, True)), ("Cb", Key(11, False))])
def test_parse_key(text, key):
    assert parse_key(text) == key


@pytest.mark.parametrize("text", ["", "H", "C dorian", "C##", "auto"])
def test_parse_key_refuses_what_is_not_a_key(text):
    with pytest.raises(ValueError, match="not a key"):
        parse_key(text)


@given(st.integers(0, 11))
def test_a_major_scale_phrase_is_found_in_its_key(tonic):
    assert find_key(scale_phrase(48 + tonic, (0, 2, 4, 5, 7, 9, 11, 12))) == Key(tonic, False)


@given(st.integers(0, 11))
def test_a_harmonic_minor_phrase_is_found_in_its_key(tonic):
    assert find_key(scale_phrase(48 + tonic, (0, 2, 3, 5, 7, 8, 11, 12))) == Key(tonic, True)


def test_no_key_without_notes_or_with_every_pitch_class_alike():
    assert find_key([]) is None
    assert find_key([Note(i, 60 + i, 2) for i in range(12)]) is None


def test_in_scale_ignores_the_octave():
    assert in_scale(61 + 12, Key(1, False)) and not in_scale(61, Key(0, False))
