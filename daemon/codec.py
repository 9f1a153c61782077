"""The paper's 153-token encoding (Section 3.1).

Time is counted in 16th-note steps. A bar is (OFFSET, BAR) with the offset from the previous
bar token; a note is (OFFSET, PITCH, DURATION) with the offset from the previous bar token.
A stream opens with a lone BAR that fixes step 0.

Normalisation the paper leaves open:
- two notes with the same start and pitch are merged, the longest kept;
- notes outside the piano range 21..108 are dropped and counted;
- notes shorter than half a step (duration rounding to 0 steps) are dropped and counted;
- notes longer than 32 steps are split (36 -> 32 + 4), as the paper splits them;
- a note that would sit 31 or more steps after the last bar gets a split bar (offset 31)
  first, so note offsets stay within 0..30. Within the file's own bars this is exactly the
  paper's bar split (a bar of 40 = 31 + 9); it only differs after the file's last bar line,
  and it keeps the stream live: after a note at offset 31 no bar could ever follow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

VOCAB_SIZE = 153
CODEC_VERSION = "paper-153-v1"

BAR = 0
OFFSET_BASE = 1
PITCH_BASE = 33
DURATION_BASE = 121

MAX_OFFSET = 31
MAX_NOTE_OFFSET = 30
MAX_DURATION = 32
PITCH_MIN = 21
PITCH_MAX = 108
DEFAULT_VELOCITY = 64


class Note(NamedTuple):
    """A note on the 16th-note grid."""

    start: int
    pitch: int
    duration: int
    velocity: int = DEFAULT_VELOCITY


def offset_token(offset: int) -> int:
    return OFFSET_BASE + offset


def pitch_token(pitch: int) -> int:
    return PITCH_BASE + pitch - PITCH_MIN


def duration_token(duration: int) -> int:
    return DURATION_BASE + duration - 1


def is_bar(token: int) -> bool:
    return token == BAR


def is_offset(token: int) -> bool:
    return OFFSET_BASE <= token < PITCH_BASE


def is_pitch(token: int) -> bool:
    return PITCH_BASE <= token < DURATION_BASE


def is_duration(token: int) -> bool:
    return DURATION_BASE <= token < VOCAB_SIZE


def token_value(token: int) -> int:
    """The offset, pitch or duration a token stands for (0 for BAR)."""
    if is_offset(token):
        return token - OFFSET_BASE
    if is_pitch(token):
        return token - PITCH_BASE + PITCH_MIN
    if is_duration(token):
        return token - DURATION_BASE + 1
    if token == BAR:
        return 0
    raise ValueError(f"token {token} is outside the vocabulary 0..{VOCAB_SIZE - 1}")


def token_name(token: int) -> str:
    """A readable name for debugging: 'Bar', 'Offset_3', 'Pitch_60', 'Duration_4'."""
    if token == BAR:
        return "Bar"
    kind = "Offset" if is_offset(token) else "Pitch" if is_pitch(token) else "Duration"
    return f"{kind}_{token_value(token)}"


def token_names(tokens: Iterable[int]) -> list[str]:
    return [token_name(int(t)) for t in tokens]


def normalise(notes: Iterable[Note]) -> tuple[list[Note], Counter]:
    """Notes as the codec can represent them, sorted by (start, pitch), and what was dropped.

    Returns the kept notes and a Counter of dropped notes by reason
    ('out_of_range', 'too_short', 'merged').
    """
    dropped: Counter = Counter()
    by_key: dict[tuple[int, int], Note] = {}
    for note in notes:
        if note.duration < 1:
            dropped["too_short"] += 1
            continue
        if not PITCH_MIN <= note.pitch <= PITCH_MAX:
            dropped["out_of_range"] += 1
            continue
        if note.start < 0:
            raise ValueError(f"note {note} starts before step 0")
        remaining, start = note.duration, note.start
        while remaining > 0:
            piece = Note(start, note.pitch, min(remaining, MAX_DURATION), note.velocity)
            key = (piece.start, piece.pitch)
            kept = by_key.get(key)
            if kept is None:
                by_key[key] = piece
            else:
                dropped["merged"] += 1
                if piece.duration > kept.duration:
                    by_key[key] = piece
            start += MAX_DURATION
            remaining -= MAX_DURATION
    return [by_key[k] for k in sorted(by_key)], dropped


def encode(notes: Iterable[Note], bar_starts: Iterable[int] = ()) -> list[int]:
    """Tokens for notes and bar lines (both in steps from 0). Notes are normalised first."""
    kept, _ = normalise(notes)
    return encode_normalised(kept, bar_starts)


def _split_bars(last_bar: int, step: int, longest: int) -> tuple[list[int], int]:
    """Split bars of 31 steps after the bar token at `last_bar` until `step` lies at most
    `longest` steps after the last of them; returns their tokens and that bar's step."""
    tokens: list[int] = []
    while step - last_bar > longest:
        last_bar += MAX_OFFSET
        tokens += (offset_token(MAX_OFFSET), BAR)
    return tokens, last_bar


def bar_line_tokens(last_bar: int, bar: int) -> list[int]:
    """Tokens for a bar line at step `bar` after the bar token at `last_bar`: split bars of 31
    first when the bar is longer than 31 steps (40 -> 31 + 9)."""
    tokens, last_bar = _split_bars(last_bar, bar, MAX_OFFSET)
    return tokens + [offset_token(bar - last_bar), BAR]


def note_event_tokens(last_bar: int, note: Note) -> tuple[list[int], int]:
    """Tokens for a note after the bar token at `last_bar`, with split bars first when it sits
    31 or more steps out; returns them and the step of the last bar token."""
    tokens, last_bar = _split_bars(last_bar, note.start, MAX_NOTE_OFFSET)
    tokens += (offset_token(note.start - last_bar), pitch_token(note.pitch), duration_token(note.duration))
    return tokens, last_bar


def encode_normalised(notes: Sequence[Note], bar_starts: Iterable[int] = ()) -> list[int]:
    """Tokens for notes already normalised (sorted by (start, pitch), unique, in range)."""
    bars = sorted({b for b in bar_starts if b > 0})
    tokens = [BAR]
    last_bar = 0
    bar_index = 0
    for note in notes:
        while bar_index < len(bars) and bars[bar_index] <= note.start:
            tokens += bar_line_tokens(last_bar, bars[bar_index])
            last_bar = bars[bar_index]
            bar_index += 1
        note_tokens, last_bar = note_event_tokens(last_bar, note)
        tokens += note_tokens
    return tokens


def decode(tokens: Iterable[int], velocity: int = DEFAULT_VELOCITY) -> list[Note]:
    """Notes from a token stream. Tokens out of place are skipped, so any stream decodes;
    a stream the grammar accepts decodes to exactly the notes it encodes."""
    notes: list[Note] = []
    bar_time = 0
    offset: int | None = None
    pitch: int | None = None
    for raw in tokens:
        token = int(raw)
        if token == BAR:
            if offset is not None:
                bar_time += offset
            offset = pitch = None
        elif is_offset(token):
            offset, pitch = token_value(token), None
        elif is_pitch(token):
            pitch = token_value(token) if offset is not None else None
        elif is_duration(token):
            if offset is not None and pitch is not None:
                notes.append(Note(bar_time + offset, pitch, token_value(token), velocity))
            offset = pitch = None
        else:
            raise ValueError(f"token {token} is outside the vocabulary 0..{VOCAB_SIZE - 1}")
    return notes


def bar_times(tokens: Iterable[int]) -> list[int]:
    """Step of every BAR token in a stream (the opening lone BAR is step 0)."""
    times: list[int] = []
    bar_time = 0
    offset = 0
    for raw in tokens:
        token = int(raw)
        if is_offset(token):
            offset = token_value(token)
        elif token == BAR:
            bar_time += offset if times else 0
            times.append(bar_time)
            offset = 0
    return times
