"""Piano-roll PNGs (time on x, pitch on y) written with numpy and zlib alone, so the daemon
needs no plotting library. Bar lines are drawn faint, C of every octave as a guide line."""

from __future__ import annotations

import os
import struct
import zlib
from typing import Iterable, Sequence

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
    """Render layers of (notes, colour) — the primer or call in 'grey' — to a PNG file."""
    write_png(path, render(layers, bar_starts))
