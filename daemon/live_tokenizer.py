"""A live performance to the same tokens the offline encoder gives for it.

`LiveTokenizer` takes note-ons, note-offs and the sustain pedal at grid positions (float 16th
steps) and commits notes in the encoder's order (start, pitch) as soon as nothing can come
before them any more: every onset that could still round to an earlier step has arrived and every
note started at or before them is finished. Quantisation is muspy's: start = round(on),
end = round(off), duration = end - start, so a performance written to a MIDI file and loaded
with training.midi_loading.load_midi encodes to exactly these tokens.

`TokenStream` is the conversation's stream (player and model alike): it turns committed notes
into tokens with bar lines, exactly as codec.encode_normalised does, and tracks the grammar
state and the last bar so the model's own tokens can be appended to the same stream.
"""

from __future__ import annotations

import copy
import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from typing import NamedTuple

from daemon.codec import (
    BAR,
    MAX_DURATION,
    PITCH_MAX,
    PITCH_MIN,
    Note,
    bar_line_tokens,
    is_offset,
    note_event_tokens,
    token_value,
)
from daemon.grammar import INITIAL, GrammarState, advance


def quantise(position: float) -> int:
    """The grid step of a position, rounded as muspy rounds (Python's round)."""
    return round(position)


class StreamMark(NamedTuple):
    """Where a stream was (TokenStream.mark), to rewind it there."""

    count: int
    state: GrammarState
    last_bar: int
    offset: int

    @property
    def last_note(self) -> tuple[int, int] | None:
        """(start, pitch) of the latest note since the last bar, as TokenStream.last_note."""
        return None if self.state.last_offset < 0 else (self.last_bar + self.state.last_offset, self.state.last_pitch)

    def can_take(self, note: Note) -> bool:
        """The note comes after everything in the stream at this mark (encoder order)."""
        last = self.last_note
        return note.start >= self.last_bar and (last is None or (note.start, note.pitch) > last)


class TokenStream:
    """Tokens so far (the opening BAR included), the grammar state and the step of the last bar."""

    def __init__(self, steps_per_bar: int, history: int = 256) -> None:
        self.steps_per_bar = steps_per_bar
        self.count = 0
        self.tokens: deque[int] = deque(maxlen=history)  # the latest tokens, what a model is primed with
        self.state: GrammarState = INITIAL
        self.last_bar = 0
        self._offset = 0
        self.append([BAR])

    @property
    def next_bar(self) -> int:
        return self.last_bar + self.steps_per_bar

    def append(self, tokens: Iterable[int]) -> None:
        """Take tokens into the stream (raises GrammarError on a token the grammar forbids)."""
        for token in tokens:
            first = self.count == 0
            self.state = advance(self.state, int(token))
            self.count += 1
            self.tokens.append(int(token))
            if is_offset(token):
                self._offset = token_value(token)
            elif token == BAR and not first:
                self.last_bar += self._offset

    def copy(self) -> TokenStream:
        return copy.deepcopy(self)

    def mark(self) -> StreamMark:
        return StreamMark(self.count, self.state, self.last_bar, self._offset)

    def rewind(self, mark: StreamMark) -> None:
        """Back to a mark taken earlier (accompaniment's rollback): the tokens since are dropped.
        The history keeps its `maxlen` only while it holds more than the tokens taken back."""
        for _ in range(min(self.count - mark.count, len(self.tokens))):
            self.tokens.pop()
        self.count, self.state, self.last_bar, self._offset = mark

    @property
    def last_note(self) -> tuple[int, int] | None:
        """(start, pitch) of the latest note since the last bar."""
        return self.mark().last_note

    def can_take(self, note: Note) -> bool:
        """The note comes after everything in the stream (encoder order)."""
        return self.mark().can_take(note)

    def bar_tokens_to(self, step: int) -> list[int]:
        """Bar lines of the meter up to and including `step` (not appended)."""
        tokens: list[int] = []
        last = self.last_bar
        bar = last + self.steps_per_bar
        while bar <= step:
            tokens += bar_line_tokens(last, bar)
            last, bar = bar, bar + self.steps_per_bar
        return tokens

    def note_tokens(self, note: Note) -> list[int]:
        """Bar lines up to the note's start, then its three tokens (not appended)."""
        # bar_tokens_to ends on the last meter bar at or before the note.
        last = self.last_bar + (note.start - self.last_bar) // self.steps_per_bar * self.steps_per_bar
        return self.bar_tokens_to(note.start) + note_event_tokens(last, note)[0]


class LiveTokenizer:
    """Note events at grid positions in, notes committed in encoder order out."""

    def __init__(self) -> None:
        self._down: dict[int, list[list[int]]] = defaultdict(list)  # pitch -> [[start, velocity, onset]] FIFO
        self._sustained: dict[int, list[list[int]]] = defaultdict(list)
        self._pedal = False
        self._done: list[tuple[int, int, int, int]] = []  # heap of (start, pitch, -duration, velocity)
        self.dropped: Counter = Counter()

    # -- events -----------------------------------------------------------------------
    def note_on(self, pitch: int, velocity: int, position: float) -> None:
        if not PITCH_MIN <= pitch <= PITCH_MAX:
            self.dropped["out_of_range"] += 1
            return
        # A key struck again under the pedal ends the note the pedal was holding.
        for start, vel in self._sustained.pop(pitch, []):
            self._finish(pitch, start, vel, position)
        self._down[pitch].append([quantise(position), velocity, quantise(position)])

    def note_off(self, pitch: int, position: float) -> None:
        held = self._down.get(pitch)
        if not held:
            return
        start, velocity, _ = held.pop(0)  # first in, first out, as the offline reader pairs them
        if not held:
            del self._down[pitch]
        if self._pedal:
            self._sustained[pitch].append([start, velocity])
        else:
            self._finish(pitch, start, velocity, position)

    def pedal(self, down: bool, position: float) -> None:
        self._pedal = down
        if not down:
            self.release_pedal(position)

    def release_keys(self, position: float) -> None:
        """End every note still down, as if all keys were released now."""
        for pitch in list(self._down):
            while self._down.get(pitch):
                self.note_off(pitch, position)

    def release_pedal(self, position: float) -> None:
        """End every note the pedal holds (the pedal itself may stay down)."""
        for pitch, notes in self._sustained.items():
            for start, velocity in notes:
                self._finish(pitch, start, velocity, position)
        self._sustained.clear()

    # -- state ------------------------------------------------------------------------
    @property
    def keys_down(self) -> int:
        return sum(len(v) for v in self._down.values())

    def holding(self, position: float) -> int:
        """Keys down that hold back a hand-over. A key down for more than the 32-step cap does
        not (nor one whose note-off was lost on the way): it must not silence the daemon forever."""
        now = quantise(position)
        return sum(1 for notes in self._down.values() for note in notes if now - note[2] < MAX_DURATION)

    @property
    def sounding(self) -> int:
        return self.keys_down + sum(len(v) for v in self._sustained.values())

    @property
    def pending(self) -> int:
        """Notes finished but not yet committed."""
        return len(self._done)

    def commit(self, position: float) -> list[Note]:
        """Notes that can no longer be preceded by anything, in (start, pitch) order."""
        self._cap(position)
        now = quantise(position)
        first_open = min(
            ((s, p) for p, notes in (*self._down.items(), *self._sustained.items()) for s, *_ in notes),
            default=None,
        )
        committed: list[Note] = []
        while self._done:
            start, pitch, _, _ = self._done[0]
            if start >= now or (first_open is not None and (start, pitch) >= first_open):
                break
            start, pitch, longest, velocity = heapq.heappop(self._done)
            # Two notes on one (start, pitch) are one note, the longest (as codec.normalise merges).
            while self._done and self._done[0][:2] == (start, pitch):
                heapq.heappop(self._done)
                self.dropped["merged"] += 1
            committed.append(Note(start, pitch, -longest, velocity))
        return committed

    # -- internals --------------------------------------------------------------------
    def _finish(self, pitch: int, start: int, velocity: int, position: float) -> None:
        duration = quantise(position) - start
        if duration < 1:
            self.dropped["too_short"] += 1
            return
        self._pieces(pitch, start, duration, velocity)

    def _pieces(self, pitch: int, start: int, duration: int, velocity: int) -> None:
        while duration > 0:
            heapq.heappush(self._done, (start, pitch, -min(duration, MAX_DURATION), velocity))
            start += MAX_DURATION
            duration -= MAX_DURATION

    def _cap(self, position: float) -> None:
        """A note held for 32 steps is committed as a 32-step piece; the rest goes on from there."""
        now = quantise(position)
        for pitch, notes in (*self._down.items(), *self._sustained.items()):
            for note in notes:
                while now - note[0] >= MAX_DURATION:
                    heapq.heappush(self._done, (note[0], pitch, -MAX_DURATION, note[1]))
                    note[0] += MAX_DURATION
