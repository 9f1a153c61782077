"""The strict grammar of the token stream, as a small state machine.

Beyond the paper's kind order (BAR -> OFFSET, OFFSET -> BAR | PITCH, PITCH -> DURATION,
DURATION -> OFFSET) it enforces what the encoder guarantees:
- a stream opens with a lone BAR;
- note offsets within a bar never decrease and stay within 0..30;
- at equal offset, pitches strictly increase;
- a bar's own offset is >= 1 and greater than every note offset in its bar.
Every mask it returns is non-empty, so a walk that only takes masked-in tokens never gets stuck.
`accepts` is prefix-closed: any prefix of a valid stream is valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from daemon.codec import (
    BAR,
    DURATION_BASE,
    MAX_NOTE_OFFSET,
    MAX_OFFSET,
    OFFSET_BASE,
    PITCH_BASE,
    PITCH_MAX,
    PITCH_MIN,
    VOCAB_SIZE,
    is_offset,
    is_pitch,
    token_name,
    token_value,
)

START, NEED_OFFSET, HAVE_OFFSET, HAVE_PITCH = range(4)


class GrammarError(ValueError):
    pass


class GrammarState(NamedTuple):
    phase: int = START
    last_offset: int = -1  # offset of the bar's latest note, -1 before its first
    last_pitch: int = 0  # pitch of that note
    offset: int = 0  # the pending offset in HAVE_OFFSET / HAVE_PITCH


INITIAL = GrammarState()


def _bar_ok(state: GrammarState, offset: int) -> bool:
    return offset >= 1 and offset > state.last_offset


def _note_ok(state: GrammarState, offset: int, pitch: int | None = None) -> bool:
    if offset > MAX_NOTE_OFFSET or offset < state.last_offset:
        return False
    if offset > state.last_offset:
        return True
    return (pitch if pitch is not None else PITCH_MAX) > state.last_pitch


@lru_cache(maxsize=65536)
def _mask(state: GrammarState) -> np.ndarray:
    mask = np.zeros(VOCAB_SIZE, dtype=bool)
    if state.phase == START:
        mask[BAR] = True
    elif state.phase == NEED_OFFSET:
        for offset in range(MAX_OFFSET + 1):
            mask[OFFSET_BASE + offset] = _bar_ok(state, offset) or _note_ok(state, offset)
    elif state.phase == HAVE_OFFSET:
        mask[BAR] = _bar_ok(state, state.offset)
        if _note_ok(state, state.offset):
            low = state.last_pitch + 1 if state.offset == state.last_offset else PITCH_MIN
            mask[PITCH_BASE + low - PITCH_MIN : PITCH_BASE + PITCH_MAX - PITCH_MIN + 1] = True
    else:
        mask[DURATION_BASE:] = True
    mask.setflags(write=False)
    return mask


def next_mask(state: GrammarState) -> np.ndarray:
    """bool[153]: the tokens allowed next (read-only, shared between calls)."""
    return _mask(state)


@lru_cache(maxsize=262144)
def advance(state: GrammarState, token: int) -> GrammarState:
    """The state after `token`; raises GrammarError when the token is not allowed."""
    if not (0 <= token < VOCAB_SIZE and _mask(state)[token]):
        raise GrammarError(f"{_describe(token)} is not allowed after {describe(state)}")
    if state.phase == START or token == BAR:
        return GrammarState(NEED_OFFSET)
    if is_offset(token):
        return state._replace(phase=HAVE_OFFSET, offset=token_value(token))
    if is_pitch(token):
        return GrammarState(HAVE_PITCH, state.offset, token_value(token), state.offset)
    return state._replace(phase=NEED_OFFSET)


def walk(tokens: Iterable[int], state: GrammarState = INITIAL) -> GrammarState:
    """The state after a whole token sequence (raises GrammarError on the first bad token)."""
    for position, token in enumerate(tokens):
        try:
            state = advance(state, int(token))
        except GrammarError as error:
            raise GrammarError(f"token {position}: {error}") from None
    return state


def accepts(tokens: Iterable[int]) -> bool:
    """True when the tokens are a valid stream (or a prefix of one)."""
    try:
        walk(tokens)
    except GrammarError:
        return False
    return True


def masks_along(tokens: Iterable[int]) -> np.ndarray:
    """bool[len, 153]: row i is the mask for the token after tokens[i].

    Tokens the grammar rejects restart the walk from the next BAR so a flawed file still yields
    masks (every row non-empty)."""
    rows = []
    state = INITIAL
    for token in tokens:
        try:
            state = advance(state, int(token))
        except GrammarError:
            state = GrammarState(NEED_OFFSET) if int(token) == BAR else INITIAL
        rows.append(_mask(state))
    return np.array(rows, dtype=bool).reshape(-1, VOCAB_SIZE)


def describe(state: GrammarState) -> str:
    names = {START: "the stream start", NEED_OFFSET: "a bar or note", HAVE_OFFSET: "an offset", HAVE_PITCH: "a pitch"}
    text = names[state.phase]
    if state.phase in (HAVE_OFFSET, HAVE_PITCH):
        text += f" ({state.offset})"
    if state.last_offset >= 0:
        text += f", last note at offset {state.last_offset} pitch {state.last_pitch}"
    return text


def _describe(token: int) -> str:
    if 0 <= token < VOCAB_SIZE:
        return f"token {token} ({token_name(token)})"
    return f"token {token} (outside 0..{VOCAB_SIZE - 1})"

