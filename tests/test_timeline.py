"""The timeline: bar arithmetic, anchoring, tempo changes and the worker's snapshot."""

from __future__ import annotations

import math

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
