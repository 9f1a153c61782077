"""Piano-roll PNGs (time on x, pitch on y) written with numpy and zlib alone, so the daemon
needs no plotting library. Bar lines are drawn faint, C of every octave as a guide line; the
margins name the octaves (C4 = MIDI 60) and number the bars, in a 3x5 pixel font."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from daemon.codec import PITCH_MAX, PITCH_MIN, Note

GREY = "grey"
COLOURS = {
    "grey": (150, 150, 150),
    "blue": (40, 110, 220),
    "orange": (235, 130, 20),
    "green": (40, 160, 70),
    "red": (210, 50, 50),
}
BACKGROUND = (255, 255, 255)
GUIDE = (232, 232, 232)
BAR_LINE = (205, 205, 215)


def render(
    layers: Sequence[tuple[Sequence[Note], str]], bar_starts: Iterable[int] = (), step_px: int = 4, key_px: int = 4
) -> np.ndarray:
    """uint8 [height, width, 3] image of the layers (later layers drawn on top)."""
    end = max((n.start + n.duration for notes, _ in layers for n in notes), default=16)
    width, height = max(end, 16) * step_px, (PITCH_MAX - PITCH_MIN + 1) * key_px
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for pitch in range(PITCH_MIN, PITCH_MAX + 1):
        if pitch % 12 == 0:
            row = (PITCH_MAX - pitch) * key_px + key_px - 1
            image[row, :] = GUIDE
    for bar in bar_starts:
        if 0 <= bar * step_px < width:
            image[:, bar * step_px] = BAR_LINE
    for notes, colour in layers:
        rgb = COLOURS.get(colour, COLOURS["blue"])
        for note in notes:
            if not PITCH_MIN <= note.pitch <= PITCH_MAX:
                continue
            top = (PITCH_MAX - note.pitch) * key_px
            left = note.start * step_px
            right = max(left + 1, (note.start + note.duration) * step_px - 1)
            image[top : top + key_px - 1, left:right] = rgb
    return image


# 3x5 glyphs, rows top to bottom: all the axes need is digits and C.
GLYPHS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    "C": ("111", "100", "100", "100", "111"),
}
TEXT = (90, 90, 90)
SCALE = 2  # font pixels per glyph pixel
CHAR_PX = 4 * SCALE  # a glyph and its gap
LINE_PX = 5 * SCALE


def draw_text(image: np.ndarray, left: int, top: int, text: str) -> None:
    """Draw text with its top-left corner at (left, top); what falls outside is cut."""
    for index, char in enumerate(text):
        for row, bits in enumerate(GLYPHS[char]):
            for column, bit in enumerate(bits):
                if bit == "1":
                    y, x = top + row * SCALE, left + index * CHAR_PX + column * SCALE
                    image[max(y, 0) : max(y + SCALE, 0), max(x, 0) : max(x + SCALE, 0)] = TEXT


def with_axes(roll: np.ndarray, bar_starts: Iterable[int] = (), step_px: int = 4, key_px: int = 4) -> np.ndarray:
    """The roll with a left margin naming each C (octave) row and a bottom one numbering the bars
    (a number is left out where it would touch the previous one)."""
    height, width, _ = roll.shape
    left, bottom = 3 * CHAR_PX + SCALE, LINE_PX + 2 * SCALE
    image = np.empty((height + bottom, width + left, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    image[:height, left:] = roll
    for pitch in range(PITCH_MIN, PITCH_MAX + 1):
        if pitch % 12 == 0:
            row = (PITCH_MAX - pitch) * key_px + key_px - 1
            draw_text(image, SCALE, max(row - LINE_PX // 2, 0), f"C{pitch // 12 - 1}")
    free = 0  # first x a label may use
    for number, bar in enumerate(sorted(bar_starts), start=1):
        x = left + bar * step_px
        if x >= free and x < left + width:
            draw_text(image, x, height + SCALE, str(number))
            free = x + len(str(number)) * CHAR_PX + CHAR_PX
    return image


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """A plain 8-bit RGB PNG."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_piano_roll(
    path: str | os.PathLike, layers: Sequence[tuple[Sequence[Note], str]], bar_starts: Iterable[int] = ()
) -> None:
    """Render layers of (notes, colour) — the primer or call in 'grey' — to a PNG file, with axes."""
    bar_starts = list(bar_starts)
    write_png(path, with_axes(render(layers, bar_starts), bar_starts))
