"""The timeline: bar arithmetic, anchoring, tempo changes and the worker's snapshot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.clock import TempoGrid, step_seconds
from daemon.timeline import Timeline

STEP = step_seconds(120.0)


@given(origin=st.integers(-64, 64), bar=st.sampled_from([12, 16, 20]), step=st.integers(-200, 200))
def test_bar_lines_bracket_every_step(origin, bar, step):
    timeline = Timeline(120.0, bar, 0.0)
    timeline.bar_origin = origin
    before, after = timeline.bar_at_or_before(step), timeline.bar_after(step)
    assert before <= step < after == before + bar
    assert (before - origin) % bar == 0
    assert timeline.bar_at_or_before(step + 0.5) == before  # a position inside the bar, not past it


def test_anchoring_makes_the_onset_beat_one_of_the_bar_after_the_stream():
    timeline = Timeline(120.0, 16, 100.0)
    timeline.end = 48
    timeline.anchor(205.0, 120.0)
    assert timeline.position(205.0) == pytest.approx(48)
    assert timeline.bar_origin == 48 and timeline.bar_after(48) == 64
    assert timeline.time_at(64) == pytest.approx(205.0 + 16 * STEP)


def test_anchoring_on_an_external_grid_keeps_its_bar_phase():
    timeline = Timeline(120.0, 16, 0.0)
    timeline.end = 32
    timeline.set_grid(TempoGrid(10.0, STEP))
    onset = 10.0 + 21 * STEP  # the grid's step 21: five steps into its second bar
    timeline.anchor(onset)
    assert timeline.grid == TempoGrid(10.0, STEP)
    assert timeline.position(onset) == pytest.approx(32 + 5)  # the onset keeps its place in the bar


def test_a_tempo_change_keeps_the_position_now():
    timeline = Timeline(120.0, 16, 0.0)
    timeline.anchor(1.0, 120.0)
    before = timeline.position(3.0)
    timeline.set_tempo(90.0, 3.0)
    assert timeline.position(3.0) == pytest.approx(before)
    assert timeline.grid.bpm == pytest.approx(90.0)


def test_the_view_is_a_snapshot():
    timeline = Timeline(120.0, 16, 0.0)
    view = timeline.view
    timeline.anchor(5.0, 60.0)
    assert view.grid == TempoGrid(0.0, STEP) and view.shift == 0.0
    assert timeline.view != view
    with pytest.raises(AttributeError):
        view.shift = 1.0  # type: ignore[misc]


def test_the_handover_point():
    timeline = Timeline(120.0, 16, 0.0)
    lead_s = 2.5 * STEP
    assert timeline.handover_step(10.0, "bar", lead_s) == 16
    # A release closer to the bar line than the lead: legato into the next bar, wait for the one after.
    assert timeline.handover_step(14.0, "bar", lead_s) == 32
    assert timeline.handover_step(10.2, 4, lead_s) == math.ceil(14.2)


def test_extending_the_stream_end():
    timeline = Timeline(120.0, 16, 0.0)
    timeline.extend_to(3)
    assert timeline.end == 16
    timeline.extend_to(16)
    assert timeline.end == 32
    timeline.extend_to(5)
    assert timeline.end == 32


def test_following_a_player_who_slows_down_keeps_the_grid_on_their_onsets():
    """Eighths from 132 down to 110 bpm over eight bars, with 10 ms of jitter: after the first
    bar, the grid as it stands at each onset has the player's next onset on its 16th within
    40 ms (15 ms on average); a fixed grid is off by more than a 16th by the end."""
    rng = np.random.default_rng(0)
    timeline = Timeline(132.0, 16, 0.0)
    timeline.anchor(1.0, 132.0)
    t, errors = 1.0, []
    for i in range(64):
        played = t + rng.normal(0, 0.010)
        if i >= 8:
            errors.append(abs(timeline.time_at(2 * i) - t))
        assert round(timeline.position(played)) == 2 * i  # the tokenizer puts it where the player meant it
        timeline.follow(played)
        t += 2 * step_seconds(132.0 - 22.0 * i / 63)
    assert max(errors) < 0.040 and np.mean(errors) < 0.015
    assert abs(TempoGrid(1.0, step_seconds(132.0)).time_at(126) - t) > step_seconds(110.0)
    assert timeline.grid.bpm == pytest.approx(110.0, rel=0.03) and timeline.tracker.bpm == timeline.grid.bpm


def test_following_a_steady_player_keeps_the_grid_and_ignores_a_misread_onset():
    step = step_seconds(60.0)
    timeline = Timeline(60.0, 16, 0.0)
    timeline.anchor(0.0, 60.0)
    for i in range(16):
        timeline.follow(2 * i * step)
    assert timeline.grid.bpm == pytest.approx(60.0) and timeline.position(32 * step) == pytest.approx(32)
    # An onset 40% of a 16th late (100 ms): too far off the pulse to be taken for it.
    assert not timeline.follow((32 + 0.4) * step)
    assert timeline.grid.bpm == pytest.approx(60.0)
    assert timeline.follow((34 + 0.1) * step) and timeline.position((34 + 0.1) * step) == pytest.approx(34.1, abs=0.08)
