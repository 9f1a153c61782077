"""The session's phase: IDLE -> CALLING -> ANSWERING -> IDLE, and what interrupts an answer.

The session is driven directly (messages into `receive`, notes out of a list), with a tiny real
engine on its worker thread and the event loop's timers."""

from __future__ import annotations

import asyncio

import mido
import pytest

from daemon.clock import now, step_seconds
from daemon.config import settings_from
from daemon.engine import Engine
from daemon.jam import JamSession, Phase

BPM = 240.0
STEP = step_seconds(BPM)


class Harness:
    def __init__(self, session: JamSession, sent: list, events: list) -> None:
        self.session, self.sent, self.events = session, sent, events

    def note(self, pitch: int, on: bool) -> None:
        kind = "note_on" if on else "note_off"
        self.session.receive(mido.Message(kind, note=pitch, velocity=90 if on else 0), now())

    async def until(self, condition, what: str, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.005)):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}; events {self.events}")


def run(tiny_weights, scenario, **jam):
    overrides = {("tempo", "bpm"): BPM, ("jam", "seed"): 3, ("jam", "answer_bars"): 1, ("jam", "lead_ms"): 80.0}
    overrides.update({("jam", key): value for key, value in jam.items()})
    settings = settings_from({}, "test", overrides)
    engine = Engine.load(tiny_weights, "cpu")

    async def main():
        sent, events = [], []
        session = JamSession(asyncio.get_running_loop(), settings, engine, sent.append, events.append)
        try:
            await asyncio.wrap_future(session.answerer.idle())
            await scenario(Harness(session, sent, events))
        finally:
            session.close()

    asyncio.run(main())


def test_a_call_is_answered_and_the_session_returns_to_idle(tiny_weights):
    async def scenario(h: Harness):
        assert h.session.phase is Phase.IDLE
        h.note(60, True)
        assert h.session.phase is Phase.CALLING
        assert h.session.timeline.position(now()) == pytest.approx(0, abs=0.5)  # the onset anchored beat one
        await asyncio.sleep(2 * STEP)
        h.note(60, False)
        assert h.session.phase is Phase.CALLING and h.session.job is None
        await h.until(lambda: h.session.phase is Phase.ANSWERING, "the answer")
        assert h.session.job is not None and h.session.job.plan.start == 16
        await h.until(lambda: h.session.phase is Phase.IDLE, "the end of the answer")
        assert h.session.job is None
        assert [e["type"] for e in h.events if e["type"] != "state"] == ["answer_started", "answer_finished"]
        assert h.session.timeline.end == 32

    run(tiny_weights, scenario)


def test_a_barge_in_stops_the_answer_and_starts_a_new_call(tiny_weights):
    async def scenario(h: Harness):
        h.session.receive(mido.Message("control_change", control=20, value=127), now())  # nothing to hand over yet
        assert h.session.phase is Phase.IDLE
        h.note(60, True)
        await asyncio.sleep(STEP)
        h.note(60, False)
        h.session.receive(mido.Message("control_change", control=20, value=127), now())
        assert h.session.phase is Phase.ANSWERING  # the hand-over controller answers at once
        h.note(62, True)
        assert h.session.phase is Phase.CALLING and h.session.job is None
        assert h.session.stats["barge_ins"] == 1
        finished = [e for e in h.events if e["type"] == "answer_finished"]
        assert len(finished) == 1 and finished[0]["barged_in"]

    run(tiny_weights, scenario, handover_cc=20)


def test_paused_the_session_listens_but_never_answers(tiny_weights):
    async def scenario(h: Harness):
        h.session.pause()
        h.note(60, True)
        await asyncio.sleep(STEP)
        h.note(60, False)
        assert h.session.phase is Phase.CALLING
        await asyncio.sleep(24 * STEP)  # past the bar line where it would have answered
        assert h.session.phase is Phase.CALLING
        assert not [e for e in h.events if e["type"] == "answer_started"]
        assert h.session.conversation.stream.count > 1  # the played note is in the context

    run(tiny_weights, scenario)


def test_a_note_on_the_bar_line_withdraws_the_prepared_answer_unheard(tiny_weights):
    async def scenario(h: Harness):
        origin = now()
        for start in (0, 4, 8, 12):  # every four steps: the next note is due on the bar line, 16
            await asyncio.sleep(max(0.0, origin + start * STEP - now()))
            h.note(60 + start, True)
            await asyncio.sleep(STEP)
            h.note(60 + start, False)
        await h.until(lambda: h.session.phase is Phase.HANDING_OVER, "the prepared answer")
        assert h.session.job.plan.start == 17 and h.session.job.plan.end == 32  # after the bar line
        await asyncio.sleep(max(0.0, origin + 16 * STEP - now()))
        h.note(76, True)  # the player goes on
        assert h.session.phase is Phase.CALLING and h.session.job is None
        assert h.session.stats["answers_withdrawn"] == 1 and h.session.stats["barge_ins"] == 0
        await asyncio.sleep(STEP)
        assert not [m for m in h.sent if m.type == "note_on"]  # nothing of the withdrawn answer was heard
        h.note(76, False)
        await h.until(lambda: h.session.phase is Phase.ANSWERING, "the answer after the longer call")
        started = [e for e in h.events if e["type"] == "answer_started"]
        assert len(started) == 1 and started[0]["start_step"] == 32 and started[0]["bars"] == 2

    run(tiny_weights, scenario, answer_bars=0)


@pytest.mark.parametrize("how", ["panic", "pause"])
def test_an_interruption_returns_to_idle_from_any_phase(tiny_weights, how):
    async def scenario(h: Harness):
        h.session.receive(mido.Message("control_change", control=20, value=127), now())
        h.note(60, True)
        await asyncio.sleep(STEP)
        h.note(60, False)
        h.session.receive(mido.Message("control_change", control=20, value=127), now())
        assert h.session.phase is Phase.ANSWERING
        getattr(h.session, how)()
        assert h.session.phase is Phase.IDLE and h.session.job is None
        h.note(62, True)  # a key held through the interruption...
        getattr(h.session, how)()
        assert h.session.phase is Phase.IDLE  # ...ends with it
        h.session.resume()
        h.note(62, False)  # its late note-off changes nothing
        assert h.session.phase is Phase.IDLE
        end = h.session.timeline.end
        h.note(64, True)
        assert h.session.phase is Phase.CALLING
        assert h.session.timeline.position(now()) == pytest.approx(end, abs=0.5)  # a new call, anchored afresh

    run(tiny_weights, scenario, handover_cc=20, answer_bars=1)
