"""When the player's call ends and how the answer is set up: the hand-over decision in one place.

The answer starts at the hand-over point (the bar line after the player let go, or a number of
steps later, or at once on the hand-over controller) and lasts as the call did (or the set
number of bars), to a bar line; with `[tempo] click = "count-in"` a bar of clicks comes first.
Where the call's rhythm has the player's next note due on that bar line, a player going on and a
player who is done look the same until the bar line itself: the answer is then prepared at the
usual time but heard only if no onset came by half a step past the bar line (an onset before that
is quantised to the bar line or earlier), and so begins after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from daemon.answerer import AnswerPlan
from daemon.config import JamSettings
from daemon.listener import Listener
from daemon.steering import answer_options
from daemon.timeline import Timeline


@dataclass(frozen=True)
class HandOver:
    plan: AnswerPlan
    commit_at: float | None  # when the answer is heard unless the player plays first; None: at once


def hand_over(start: int, asked: bool, jam: JamSettings, timeline: Timeline, listener: Listener,
              send_ahead: float, rng: np.random.Generator, count_in: bool = False) -> HandOver:
    """The answer for a hand-over at step `start` (`asked`: by the controller, not by silence;
    `count_in`: the bar from the bar line at or after `start` is left to a count-in's clicks)."""
    bar = timeline.steps_per_bar
    bars = listener.answer_bars(jam, bar)
    first = timeline.bar_at_or_before(start - 1) + bar  # the bar line at or after start
    commit_at = None
    if not asked and jam.wait == "bar" and listener.may_play_at(start):
        commit_at = timeline.time_at(start + 0.5)
        start = max(start + 1, math.ceil(timeline.position(commit_at + send_ahead)))
    if count_in:  # the answer starts on the bar line after the count-in's bar, on the same grid
        first += bar
        start = first
    options = answer_options(jam, listener.call_notes, bar, listener.call_bars(bar) * bar)
    plan = AnswerPlan(start, first + bars * bar, bars, listener.velocity(jam.velocity), timeline.view, options,
                      jam.lookahead_steps, send_ahead, rng)
    return HandOver(plan, commit_at)
