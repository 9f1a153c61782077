"""The inference worker: the engine's one thread, and the live answer that runs on it.

All feeds, resets, swaps and answers run on that thread in the order they were submitted, so
the engine always holds the stream's tokens in order. An answer starts from an `AnswerPlan`, an
immutable snapshot the session takes on the event loop (the timeline, the sampling options, the
output's send-ahead, the rng it hands over): the worker never reads loop-owned state. What the
answer sends back (each note, then the end) goes to the loop through `post`
(loop.call_soon_threadsafe). The token loop itself is answer_loop.generate_answer.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from daemon.answer_loop import Answer, AnswerOptions, Pacing, generate_answer
from daemon.clock import now
from daemon.codec import Note
from daemon.live_tokenizer import TokenStream
from daemon.timeline import TimelineView

log = logging.getLogger("antiphon.jam")

# Time, besides the tokens still to sample, between choosing an onset and its note-on callback;
# generous because a busy machine can stall the inference thread for tens of milliseconds.
SCHEDULE_MARGIN_S = 0.025
PACING_WAIT_S = 0.05  # the longest single wait while ahead, so a stop is seen soon
WORKER_NICENESS = 5  # how much nicer the inference thread is than the event loop
FIRST_TOKEN_S = 0.002  # the per-token estimate before anything was measured


def _lower_this_threads_priority() -> None:
    """Inference yields the CPU to the event loop: a note due now beats the next token."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS)
    except OSError as error:  # not on Linux, or a sandbox that forbids it: timing gets worse, that is all
        log.debug("cannot lower the inference thread's priority: %s", error)


@dataclass(frozen=True)
class AnswerPlan:
    """What the worker needs for one answer, fixed when it starts."""

    start: int  # stream step of the answer's first possible onset
    end: int  # stream step of the bar line that ends it
    bars: int
    velocity: int
    timeline: TimelineView
    options: AnswerOptions
    lookahead_steps: int  # how far generation may run ahead of playback
    send_ahead: float  # the output sends notes this much before their grid time
    rng: np.random.Generator  # handed over: only the worker draws from it


@dataclass(eq=False)
class AnswerJob:
    """One answer in flight. `stream` and `answer` are written by the worker until `done`; the rest
    is the loop's (the loop reads only the answer's counts before then)."""

    plan: AnswerPlan
    stream: TokenStream  # the worker's copy of the stream, extended by the answer
    stop: threading.Event = field(default_factory=threading.Event)
    answer: Answer = field(default_factory=Answer)
    done: bool = False  # generation ended (set on the loop)
    scheduled: list[tuple[Note, list[int], float]] = field(default_factory=list)  # (note, tokens, on time)
    played: int = 0
    first_error_ms: float | None = None
    worst_error_ms: float = 0.0  # the answer note sent furthest from its grid time, either way
    barged_in: bool = False
    failed: bool = False  # generation raised (the worker logged it): the engine no longer matches the stream

    def note_sent(self, due: float, sent: float) -> None:
        self.played += 1
        error_ms = (sent - due) * 1000
        if self.first_error_ms is None:
            self.first_error_ms = error_ms
        self.worst_error_ms = max(self.worst_error_ms, abs(error_ms))


class _LivePacing(Pacing):
    """The clock's part of a live answer (worker thread)."""

    def __init__(self, answerer: Answerer, job: AnswerJob, on_note: Callable[[AnswerJob, Note, list[int]], None]) -> None:
        self.answerer = answerer
        self.job = job
        self.view = job.plan.timeline
        self.lookahead = job.plan.lookahead_steps
        self.fixed_margin = SCHEDULE_MARGIN_S + job.plan.send_ahead
        self.on_note = on_note
        self.stopped = job.stop.is_set

    def wait_ahead(self, stream: TokenStream) -> bool:
        generated = stream.last_bar + max(stream.state.last_offset, 0)
        wait = self.view.time_at(generated - self.lookahead) - now()
        if wait <= 0:
            return False
        self.job.stop.wait(min(wait, PACING_WAIT_S))
        return True

    def earliest(self, start: int) -> int:
        margin = self.fixed_margin + 3 * self.answerer.token_seconds
        return max(start, math.ceil(self.view.position(now() + margin)))

    def token_took(self, seconds: float) -> None:
        self.answerer.token_seconds = 0.9 * self.answerer.token_seconds + 0.1 * seconds

    def note(self, note: Note, tokens: list[int]) -> None:
        self.answerer.post(self.on_note, self.job, note, tokens)


class Answerer:
    """Owns the engine and the thread it runs on."""

    def __init__(self, engine, post: Callable[..., object]) -> None:
        self.engine = engine
        self.post = post  # runs a callback on the event loop (thread-safe)
        self.token_seconds = FIRST_TOKEN_S  # running estimate of one sample+feed (worker thread only)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="antiphon-engine",
                                        initializer=_lower_this_threads_priority)

    def feed(self, tokens: list[int]) -> Future:
        return self._submit(self._feed, tokens)

    def reset(self, tokens: list[int]) -> Future:
        return self._submit(self._reset, tokens)

    def swap(self, engine, tokens: list[int] | Callable[[], list[int]]) -> Future:
        """Use `engine`, primed with `tokens` (or what the callable returns on the worker, once the
        jobs before have run), from the next job on."""
        return self._submit(self._swap, engine, tokens)

    def idle(self) -> Future:
        """Done once everything submitted so far has run."""
        return self._submit(lambda: None)

    def answer(self, job: AnswerJob, on_note: Callable[[AnswerJob, Note, list[int]], None],
               on_done: Callable[[AnswerJob], None]) -> Future:
        """Generate `job` on the worker; `on_note` and `on_done` run on the loop."""
        return self._submit(self._answer, job, on_note, on_done)

    def run(self, job: Callable[..., None], *args) -> Future:
        """Run job(engine, *args) on the worker, with the engine it has then (accompaniment)."""
        return self._submit(lambda: job(self.engine, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- worker thread ----------------------------------------------------------------
    def _submit(self, function, *args) -> Future:
        future = self._pool.submit(function, *args)
        future.add_done_callback(self._failed)
        return future

    @staticmethod
    def _failed(future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("inference failed: %s", future.exception(), exc_info=future.exception())

    def _feed(self, tokens: list[int]) -> None:
        self.engine.feed(tokens)

    def _reset(self, tokens: list[int]) -> None:
        self.engine.reset(tokens)

    def _swap(self, engine, tokens: list[int] | Callable[[], list[int]]) -> None:
        engine.reset(tokens() if callable(tokens) else tokens)
        self.engine = engine

    def _answer(self, job: AnswerJob, on_note, on_done) -> None:
        plan = job.plan
        pacing = _LivePacing(self, job, on_note)
        try:
            generate_answer(self.engine, job.stream, plan.start, plan.end, plan.options, plan.rng, plan.velocity,
                            pacing, job.answer)
        except Exception:  # the session must hear of it either way, or it waits for this answer forever
            log.error("the answer failed; what was played is kept and the engine starts again from it",
                      exc_info=True)
            job.failed = True
        self.post(on_done, job)


def answer_report(job: AnswerJob, late_played: int, late_dropped: int) -> dict:
    """The `answer_finished` event for a finished or stopped answer (and its log line)."""
    plan, answer = job.plan, job.answer
    music_s = (plan.end - plan.start) * plan.timeline.step_s
    rate = answer.tokens / answer.busy_s if answer.busy_s > 0 else 0.0
    consumed = answer.tokens / music_s if music_s > 0 else 0.0
    event = {
        "type": "answer_finished",
        "notes": job.played,
        "bars": plan.bars,
        "latency_ms": None if job.first_error_ms is None else round(job.first_error_ms, 3),
        "worst_timing_error_ms": round(job.worst_error_ms, 3),
        "tokens": answer.tokens,
        "tokens_per_s": round(rate, 1),
        "realtime_factor": round(rate / consumed, 2) if consumed else None,
        "late_played": late_played,
        "late_dropped": late_dropped,
        "barged_in": job.barged_in,
        "failed": job.failed,
    }
    log.info(
        "answer: %d notes, %d bars, first note %s ms, worst %.3f ms, %d tokens at %.0f tok/s, late notes so "
        "far: %d played, %d dropped%s",
        job.played, plan.bars, event["latency_ms"], job.worst_error_ms, answer.tokens, rate, late_played,
        late_dropped, " (barged in)" if job.barged_in else "",
    )
    return event
