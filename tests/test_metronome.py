"""The clicks' schedule on a virtual clock: which beats, which notes, the accent, every click released."""

from __future__ import annotations

import heapq
import itertools

import mido
import pytest

from daemon.config import settings_from
from daemon.echo import EchoFilter
from daemon.listener import Listener
from daemon.metronome import CLICK_ACCENT_VELOCITY, CLICK_VELOCITY, Metronome, beats_between
from daemon.tempo_keeper import TempoKeeper
from daemon.timeline import Timeline

BPM = 240.0  # a 16th is 1/16 s, a beat 1/4 s, a 4/4 bar 1 s
STEP = 1 / 16


class Timer:
    def __init__(self, when: float, callback, args: tuple) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualLoop:
    """call_at/call_later on a clock that moves only when run_until says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self._timers: list = []
        self._order = itertools.count()

    def call_at(self, when: float, callback, *args) -> Timer:
        timer = Timer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback, *args) -> Timer:
        return self.call_at(self.t + delay, callback, *args)

    def run_until(self, end: float) -> None:
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.t = max(self.t, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.t = end


@pytest.fixture
def clicks(monkeypatch):
    """A metronome on a virtual loop; returns (metronome, loop, sent [(t, message)], echoes, timeline)."""
    loop = VirtualLoop()
    monkeypatch.setattr("daemon.metronome.now", lambda: loop.t)
    monkeypatch.setattr("daemon.output.now", lambda: loop.t)
    monkeypatch.setattr("daemon.output.EARLY_WAKE_S", 0.0)  # no busy wait on a clock that stands still

    def make(meter: str = "4/4", **tempo) -> tuple:
        settings = settings_from({"tempo": {"bpm": BPM, "meter": meter, **tempo}}, "test")
        sent: list[tuple[float, mido.Message]] = []
        echoes = EchoFilter(0.1)
        timeline = Timeline(BPM, settings.steps_per_bar, 0.0)
        metronome = Metronome(loop, lambda m: sent.append((loop.t, m)), settings, timeline, echoes)
        return metronome, loop, sent, echoes, timeline

    return make


def ons(sent) -> list[tuple[float, int, int, int]]:
    """(time, channel, note, velocity) of every note-on."""
    return [(t, m.channel, m.note, m.velocity) for t, m in sent if m.type == "note_on" and m.velocity > 0]


def all_released(sent) -> bool:
    sounding = 0
    for _, m in sent:
        if m.type == "note_on" and m.velocity > 0:
            sounding += 1
        elif m.type in ("note_on", "note_off"):
            sounding -= 1
            assert sounding >= 0
    return sounding == 0


def test_beats_fall_every_quarter_from_each_bar_line():
    assert beats_between(0, 17, 16) == [0, 4, 8, 12, 16]
    assert beats_between(0.1, 8, 16) == [4]
    assert beats_between(13, 35, 14) == [14, 18, 22, 26, 28, 32]  # 7/8: the last beat of a bar is an eighth
    assert beats_between(-3.5, 1, 16) == [0]


def test_the_metronome_clicks_every_beat_accented_on_beat_one_and_stops(clicks):
    metronome, loop, sent, echoes, _ = clicks()
    loop.t = 0.1  # between steps 1 and 2: the first click is beat two
    metronome.start()
    assert metronome.running
    loop.run_until(2.1)
    metronome.stop()
    loop.run_until(3.0)
    assert not metronome.running
    clicked = ons(sent)
    assert [t for t, *_ in clicked] == pytest.approx([k * 4 * STEP for k in range(1, 9)])
    assert {channel for _, channel, _, _ in clicked} == {9}
    accents = [(note, velocity) for _, _, note, velocity in clicked]
    beat, accent = (77, CLICK_VELOCITY), (76, CLICK_ACCENT_VELOCITY)
    assert accents == [beat, beat, beat, accent, beat, beat, beat, accent]
    assert all_released(sent)
    assert all(echoes.note_on_is_echo(note, t + 0.01) for t, _, note, _ in clicked[-1:])


def test_the_metronome_follows_a_tempo_change_without_doubling_a_click(clicks):
    metronome, loop, sent, _, timeline = clicks()
    loop.t = 0.01
    metronome.start()
    loop.run_until(1.02)
    timeline.set_tempo(120.0, 1.02)  # position 16.32 kept: the next beat (20) is 3.68 steps of 1/8 s away
    loop.run_until(2.0)
    metronome.stop()
    times = [t for t, *_ in ons(sent)]
    assert times == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.02 + 3.68 / 8, 1.02 + 7.68 / 8])
    assert all_released(sent)


def test_stopping_ends_a_sounding_click_at_once(clicks):
    metronome, loop, sent, _, _ = clicks()
    loop.t = 0.01
    metronome.start()
    loop.run_until(0.26)  # the click at 0.25 sounds (50 ms)
    metronome.stop()
    assert [(t, m.type) for t, m in sent] == [(0.25, "note_on"), (0.26, "note_off")]


def test_panic_silences_the_click_channel(clicks):
    metronome, loop, sent, _, _ = clicks()
    metronome.start()
    loop.run_until(0.26)
    metronome.panic()
    assert all_released(sent)
    assert [(m.channel, m.control) for _, m in sent if m.type == "control_change"] == [(9, 64), (9, 123), (9, 120)]


def test_a_count_in_bar_clicks_each_beat_of_the_meter_with_the_configured_notes(clicks):
    metronome, loop, sent, _, timeline = clicks("7/8", click_channel=16, click_accent_note=37, click_note=42)
    metronome.bar(timeline.time_at, 14)
    loop.run_until(3.0)
    clicked = ons(sent)
    assert [t for t, *_ in clicked] == pytest.approx([14 * STEP, 18 * STEP, 22 * STEP, 26 * STEP])
    assert [(channel, note) for _, channel, note, _ in clicked] == [(15, 37), (15, 42), (15, 42), (15, 42)]
    assert all_released(sent)


def test_a_cut_count_in_goes_but_a_running_metronome_keeps_time(clicks):
    metronome, loop, sent, _, timeline = clicks()
    metronome.bar(timeline.time_at, 16)
    loop.run_until(1.1)
    metronome.cut_count_in()  # an answer withdrawn during its count-in
    loop.run_until(3.0)
    assert [t for t, *_ in ons(sent)] == [1.0] and all_released(sent)
    metronome.start()  # on beat one: it clicks now
    loop.run_until(3.3)
    metronome.cut_count_in()
    loop.run_until(4.1)
    assert [t for t, *_ in ons(sent)] == [1.0, 3.0, 3.25, 3.5, 3.75, 4.0] and metronome.running


def test_a_setting_change_stops_the_metronome_only_when_clicks_are_no_longer_always(clicks):
    metronome, loop, _, _, _ = clicks(click="always")
    metronome.start()
    metronome.update_settings(settings_from({"tempo": {"click": "always"}, "jam": {"temperature": 0.5}}, "test"))
    assert metronome.running
    metronome.update_settings(settings_from({"tempo": {"click": "count-in"}}, "test"))
    assert not metronome.running


def test_a_call_starts_the_metronome_and_the_next_call_is_read_on_its_beat(clicks):
    metronome, loop, _, _, timeline = clicks(click="always")
    keeper = TempoKeeper(settings_from({"tempo": {"bpm": BPM, "click": "always"}}, "test"), timeline, Listener(),
                         metronome, lambda event: None)
    keeper.anchor(0.3, clicks=False)  # paused: no clicks
    assert not metronome.running
    keeper.anchor(0.3)  # the first call's onset is beat one; the metronome starts on its grid
    assert metronome.running and timeline.grid.origin == 0.3
    timeline.end = 48  # the first exchange took three bars
    onset = 0.3 + 37 * STEP  # a 16th after beat two of the metronome's third bar
    keeper.anchor(onset)
    assert timeline.grid.origin == 0.3 and timeline.position(onset) == pytest.approx(48 + 5)
