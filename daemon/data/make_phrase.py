"""Writes phrase.mid, the demo's built-in call: two bars in C major, a melody over chords.

Run from the repository root: python daemon/data/make_phrase.py
"""

from pathlib import Path

from daemon.codec import Note
from daemon.midifile import write_midi

CHORDS = [(0, 14, (48, 52, 55)), (16, 8, (53, 57, 60)), (24, 6, (55, 59, 62))]  # C, F, G
MELODY = [(0, 64, 4), (4, 67, 2), (6, 72, 2), (8, 71, 4), (12, 67, 4),
          (16, 69, 2), (18, 72, 2), (20, 74, 4), (24, 71, 2), (26, 67, 4)]


def phrase() -> list[Note]:
    chords = [Note(start, pitch, length, 62) for start, length, pitches in CHORDS for pitch in pitches]
    melody = [Note(start, pitch, length, 88) for start, pitch, length in MELODY]
    return sorted(chords + melody)


if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "phrase.mid"
    write_midi(target, [("call", phrase())], bpm=120)
    print(f"wrote {target}")
