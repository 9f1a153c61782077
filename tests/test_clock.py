"""Following an external MIDI clock: tempo, phase, start/stop/continue and song position."""

from __future__ import annotations

import random

import pytest

from daemon.clock import TICKS_PER_STEP, ClockFollower, TempoGrid, step_seconds


def tick_times(bpm: float, count: int, start: float, jitter: float = 0.0, seed: int = 0) -> list[float]:
    period = 60.0 / bpm / 24
    rng = random.Random(seed)
    return [start + i * period + rng.uniform(-jitter, jitter) for i in range(count)]


def test_clock_sets_tempo_and_zero_at_start():
    clock = ClockFollower()
    clock.handle("start", 10.0)
    times = tick_times(132.0, 48, 10.001, jitter=0.0004)
    for t in times:
        clock.handle("clock", t)
    grid = clock.grid()
    assert clock.present(times[-1])
    assert grid.bpm == pytest.approx(132.0, rel=0.01)
    assert grid.position(times[0]) == pytest.approx(0.0, abs=0.05)  # the first clock after start is 0
    assert grid.position(times[24]) == pytest.approx(4.0, abs=0.05)  # one quarter note later


def test_clock_is_absent_before_start_after_stop_and_after_silence():
    clock = ClockFollower()
    for t in tick_times(120.0, 10, 0.0):
        clock.handle("clock", t)
    assert not clock.present(0.2)  # ticks without start: not running
    clock.handle("start", 1.0)
    times = tick_times(120.0, 10, 1.01)
    for t in times:
        clock.handle("clock", t)
    assert clock.present(times[-1])
    assert not clock.present(times[-1] + 1.0)  # the clock went quiet
    clock.handle("stop", times[-1] + 0.01)
    assert not clock.present(times[-1] + 0.02)


def test_continue_resumes_and_song_position_moves_the_grid():
    clock = ClockFollower()
    clock.handle("start", 0.0)
    for t in tick_times(120.0, 12, 0.01):
        clock.handle("clock", t)
    clock.handle("stop", 0.3)
    clock.handle("songpos", 0.4, song_position=32)  # two bars in
    clock.handle("continue", 0.5)
    times = tick_times(120.0, 24, 0.51)
    for t in times:
        clock.handle("clock", t)
    grid = clock.grid()
    assert grid.position(times[0]) == pytest.approx(32.0, abs=0.05)
    assert grid.position(times[TICKS_PER_STEP * 2]) == pytest.approx(34.0, abs=0.05)


def test_tempo_grid_keeps_its_position_through_a_tempo_change():
    grid = TempoGrid(origin=5.0, step=step_seconds(120.0))
    changed = grid.with_bpm(90.0, now=7.0)
    assert changed.position(7.0) == pytest.approx(grid.position(7.0))
    assert changed.bpm == pytest.approx(90.0)
    assert changed.time_at(changed.position(8.0)) == pytest.approx(8.0)
