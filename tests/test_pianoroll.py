"""Piano rolls: notes where their time and pitch say, the primer grey, axes that name octaves and bars."""

import zlib

import numpy as np

from daemon.codec import PITCH_MAX, Note
from daemon.pianoroll import BACKGROUND, CHAR_PX, COLOURS, LINE_PX, TEXT, render, with_axes, write_piano_roll


def test_notes_land_on_their_steps_and_keys_in_their_layer_colour():
    primer, answer = [Note(start=0, pitch=60, duration=4)], [Note(start=8, pitch=72, duration=2)]
    image = render([(primer, "grey"), (answer, "blue")], step_px=4, key_px=4)
    assert image.shape == (4 * (PITCH_MAX - 21 + 1), 4 * 16, 3)
    assert tuple(image[(PITCH_MAX - 60) * 4, 0]) == COLOURS["grey"]
    assert tuple(image[(PITCH_MAX - 60) * 4, 4 * 4 - 1]) == BACKGROUND  # a gap before the next step
    assert tuple(image[(PITCH_MAX - 72) * 4, 8 * 4]) == COLOURS["blue"]
    assert tuple(image[(PITCH_MAX - 72) * 4, 10 * 4]) == BACKGROUND


def test_axes_name_the_octaves_and_number_the_bars():
    roll = render([([Note(start=0, pitch=60, duration=64)], "blue")], range(0, 64, 16))
    image = with_axes(roll, range(0, 64, 16))
    left = image.shape[1] - roll.shape[1]
    assert image.shape[0] > roll.shape[0] and left > 0
    assert np.array_equal(image[: roll.shape[0], left:], roll)
    c4_row = (PITCH_MAX - 60) * 4 + 3
    label = image[c4_row - LINE_PX // 2 : c4_row + LINE_PX, :left]
    assert (label == TEXT).all(-1).any()  # "C4" beside its guide line
    margin = image[roll.shape[0] :, left:]
    for bar in range(4):  # "1" .. "4" under each bar line
        assert (margin[:, bar * 64 : bar * 64 + CHAR_PX] == TEXT).all(-1).any()


def test_bar_numbers_that_would_touch_are_left_out():
    roll = render([], range(0, 16, 1), step_px=1)
    image = with_axes(roll, range(0, 16, 1), step_px=1)
    margin = (image[roll.shape[0] :] == TEXT).all(-1).any(0)
    # Bars 1 px apart: a label every len("1") * CHAR_PX + CHAR_PX px at most.
    starts = [x for x in range(1, margin.size) if margin[x] and not margin[x - 1]]
    assert all(b - a >= CHAR_PX for a, b in zip(starts, starts[1:]))


def test_the_png_holds_the_rendered_pixels(tmp_path):
    path = tmp_path / "roll.png"
    write_piano_roll(path, [([Note(start=0, pitch=48, duration=16)], "grey")], [0])
    data = path.read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    start = data.index(b"IDAT") + 4
    raw = zlib.decompress(data[start : start + int.from_bytes(data[start - 8 : start - 4], "big")])
    pixels = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * 3)[:, 1:].reshape(height, width, 3)
    assert (pixels == COLOURS["grey"]).all(-1).sum() == (16 * 4 - 1) * 3  # 16 steps x 4 px less the end gap, 3 rows
