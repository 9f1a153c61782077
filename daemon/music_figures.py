"""Figures that describe an answer as music, measured against the call it answers.

Both phrases are grid notes (16th steps) counted from their own first bar line, so a call of
`call_steps` steps starts at 0 and so does its answer. A figure that needs notes and has none is
nan (an empty answer has no key and no clashes); bench/answer_quality.py averages over the calls
where it is defined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from daemon.codec import MAX_DURATION, Note
from daemon.keys import Key, find_key, pitch_class_histogram

STEPS_PER_BEAT = 4


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two histograms; 0 when either is empty (nothing in common)."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0


def in_scale_rate(notes: Sequence[Note], key: Key | None) -> float:
    """Share of the notes whose pitch class is in the key's scale."""
    if not notes or key is None:
        return math.nan
    scale = key.scale
    return sum(bool(scale[note.pitch % 12]) for note in notes) / len(notes)


def pitch_class_cosine(answer: Sequence[Note], call: Sequence[Note]) -> float:
    """Cosine of the two phrases' pitch-class note counts."""
    return cosine(pitch_class_histogram(answer, weighted=False), pitch_class_histogram(call, weighted=False))


def mean_pitch_distance(answer: Sequence[Note], call: Sequence[Note]) -> float:
    """|mean pitch of the answer - mean pitch of the call|, in semitones."""
    if not answer or not call:
        return math.nan
    return abs(float(np.mean([n.pitch for n in answer])) - float(np.mean([n.pitch for n in call])))


def density_ratio(answer: Sequence[Note], answer_steps: int, call: Sequence[Note], call_steps: int) -> float:
    """Notes per step of the answer over notes per step of the call."""
    if not call:
        return math.nan
    return (len(answer) / answer_steps) / (len(call) / call_steps)


def onset_histogram(notes: Sequence[Note], steps_per_bar: int) -> np.ndarray:
    histogram = np.zeros(steps_per_bar)
    for note in notes:
        histogram[note.start % steps_per_bar] += 1
    return histogram


def onset_cosine(answer: Sequence[Note], call: Sequence[Note], steps_per_bar: int) -> float:
    """Cosine of the two phrases' histograms of onset position within the bar."""
    return cosine(onset_histogram(answer, steps_per_bar), onset_histogram(call, steps_per_bar))


def duration_distance(answer: Sequence[Note], call: Sequence[Note]) -> float:
    """Total variation distance between the two phrases' duration distributions (0 same, 1 disjoint)."""
    if not answer or not call:
        return math.nan
    a = np.bincount([n.duration for n in answer], minlength=MAX_DURATION + 1) / len(answer)
    c = np.bincount([n.duration for n in call], minlength=MAX_DURATION + 1) / len(call)
    return 0.5 * float(np.abs(a - c).sum())


def copy_rate(answer: Sequence[Note], call: Sequence[Note], call_steps: int) -> float:
    """Share of the answer's notes that repeat a call note: the same pitch at the same place in
    the phrase (the answer's step taken modulo the call's length, so an answer longer than the
    call copies it again)."""
    if not answer:
        return math.nan
    played = {(note.start, note.pitch) for note in call}
    return sum((note.start % call_steps, note.pitch) in played for note in answer) / len(answer)


def sounding_counts(notes: Sequence[Note], steps: int) -> np.ndarray:
    """int[steps]: how many of the notes sound at each step."""
    counts = np.zeros(steps, dtype=int)
    for note in notes:
        counts[max(note.start, 0) : min(note.start + note.duration, steps)] += 1
    return counts


def polyphony(notes: Sequence[Note], steps: int) -> float:
    """Mean number of notes sounding over the steps where any sounds."""
    counts = sounding_counts(notes, steps)
    sounding = counts[counts > 0]
    return float(sounding.mean()) if sounding.size else math.nan


def silent_beats(notes: Sequence[Note], steps: int, beat: int = STEPS_PER_BEAT) -> float:
    """Share of the phrase's beats in which no note sounds at all (a last partial beat counts)."""
    counts = sounding_counts(notes, steps)
    beats = [counts[i : i + beat] for i in range(0, steps, beat)]
    return sum(not chunk.any() for chunk in beats) / len(beats)


def clash_count(notes: Sequence[Note]) -> int:
    """Notes that start a semitone away from another note of the phrase sounding at their onset
    (notes struck together clash with each other: both count)."""
    clashes = 0
    for note in notes:
        for other in notes:
            if other is note or abs(other.pitch - note.pitch) != 1:
                continue
            if other.start <= note.start < other.start + other.duration:
                clashes += 1
                break
    return clashes


def clash_rate(notes: Sequence[Note]) -> float:
    """Share of the notes that clash (clash_count)."""
    return clash_count(notes) / len(notes) if notes else math.nan


@dataclass(frozen=True)
class Figures:
    in_scale: float
    pc_cos: float
    pitch_distance: float
    density_ratio: float
    onset_cos: float
    duration_distance: float
    copy: float
    polyphony: float
    silent_beats: float
    clash: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


FIGURE_NAMES = tuple(Figures.__dataclass_fields__)


def figures(
    call: Sequence[Note],
    answer: Sequence[Note],
    steps_per_bar: int,
    call_steps: int,
    answer_steps: int,
    key: Key | None = None,
) -> Figures:
    """Every figure of an answer to a call; the key defaults to the call's (find_key)."""
    key = find_key(call) if key is None else key
    return Figures(
        in_scale=in_scale_rate(answer, key),
        pc_cos=pitch_class_cosine(answer, call),
        pitch_distance=mean_pitch_distance(answer, call),
        density_ratio=density_ratio(answer, answer_steps, call, call_steps),
        onset_cos=onset_cosine(answer, call, steps_per_bar),
        duration_distance=duration_distance(answer, call),
        copy=copy_rate(answer, call, call_steps),
        polyphony=polyphony(answer, answer_steps),
        silent_beats=silent_beats(answer, answer_steps),
        clash=clash_rate(answer),
    )
