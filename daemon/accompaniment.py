"""Accompaniment live: the Accompanist on the inference worker, in time, while the player plays.

The session (loop) starts an `AccompanyJob` when the player starts and hands it each onset
(`onset`: the note goes into the stream at once), the player's notes as the listener commits
them (`offer_notes`: their real durations) and each key event (`activity`). The worker
runs `accompany` for the whole stretch: it places the player's notes, fixes the model's notes
that playback is about to reach and posts them to the loop (which plays them on time), and
decides `lookahead_steps` sixteenths ahead. Nothing is posted before it is fixed, so the loop
never has to withdraw a scheduled note: a rollback only ever takes back notes the loop has not
seen. When playback passes the end of the bar the player stopped in (plus
accompany_tail_bars - 1 bars), or the job is stopped (panic, pause, mode change, exit), the worker
takes back what it decided but did not fix, and posts the end; the loop then takes the job's
stream, which the engine holds, as the conversation's.

Player's notes offered after the worker stopped taking them are kept for the loop (`leftover`).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from daemon.accompanist import Accompanist
from daemon.answer_loop import AnswerOptions
from daemon.answerer import PACING_WAIT_S, SCHEDULE_MARGIN_S, Answerer
from daemon.clock import now
from daemon.codec import Note
from daemon.decoding import ROLLBACK_TOKENS
from daemon.live_tokenizer import TokenStream
from daemon.steering import PlayerSteering
from daemon.timeline import TimelineView

log = logging.getLogger("antiphon.jam")
SETTLE_MARGIN_S = 0.005  # slack kept when the releases go in between two steps
# A stretch ends this long after its end bar line, not at it: the player's note on the downbeat,
# a release at the bar line, and the ticker's word that a key is still down (every 50 ms) may
# arrive a little after it, and go on with the same stretch.
END_GRACE_S = 0.1


@dataclass(frozen=True)
class AccompanyPlan:
    """What the worker needs for one stretch of accompaniment, fixed when it starts."""

    join: int  # the first step the model may play at
    bar_origin: int  # a bar line of the meter
    tail_bars: int
    velocity: int
    pitch_range: tuple[int, int]
    options: AnswerOptions
    steering: PlayerSteering  # the worker's from the start
    lookahead_steps: int
    send_ahead: float
    rng: np.random.Generator  # handed over: only the worker draws from it

    def end_after(self, last_activity: float, steps_per_bar: int) -> int:
        """The bar line the model stops at: the end of the bar of the player's latest key event,
        and tail_bars - 1 more."""
        bar = math.floor((last_activity - self.bar_origin) / steps_per_bar) + self.tail_bars
        return self.bar_origin + bar * steps_per_bar


@dataclass(eq=False)
class AccompanyJob:
    """One stretch of accompaniment. `stream` is the worker's until `done`."""

    plan: AccompanyPlan
    stream: TokenStream
    last_activity: float  # stream step of the player's latest key event
    # Stream step <-> time; the loop replaces it whole while it follows the player's tempo.
    view: TimelineView
    stop: threading.Event = field(default_factory=threading.Event)
    # ("onset", (step, pitch, velocity)) | ("note", Note) | ("activity", step)
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    leftover: list[Note] = field(default_factory=list)  # offered after the worker stopped taking notes
    accompanist: Accompanist | None = None  # the worker's
    end: int = 0  # the bar line it stopped at (set by the worker when it ends)
    played: int = 0  # model notes sent (loop)
    done: bool = False  # the worker has finished (set on the loop)
    failed: bool = False  # the worker raised (it logged why): the engine no longer matches the stream
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- loop side ----------------------------------------------------------------------
    def offer_notes(self, notes: list[Note]) -> None:
        with self._lock:
            if self._closed:
                self.leftover += notes
                return
            for note in notes:
                self.inbox.put(("note", note))

    def activity(self, step: float) -> None:
        self.inbox.put(("activity", step))

    def onset(self, step: int, pitch: int, velocity: int) -> None:
        with self._lock:
            if not self._closed:
                self.inbox.put(("onset", (step, pitch, velocity)))

    # -- worker side --------------------------------------------------------------------
    def close(self) -> list[tuple[str, object]]:
        """No more notes to the worker: what is still in the inbox, for it to take in last."""
        with self._lock:
            self._closed = True
            left = []
            while True:
                try:
                    left.append(self.inbox.get_nowait())
                except queue.Empty:
                    return left


def accompany(engine, job: AccompanyJob, answerer: Answerer, on_note: Callable[[AccompanyJob, Note], None],
              on_done: Callable[[AccompanyJob], None]) -> None:
    """The worker's side of one job (see the module's docstring); Answerer.run runs it. However it
    ends, the loop hears of it (`on_done`): a job that raised is `failed`, its stream kept as it
    stands (grammatical: tokens go in whole) and the engine to be reset to it."""
    try:
        _accompany(engine, job, answerer, on_note)
    except Exception:
        log.error("the accompaniment failed; the stream is kept and the engine starts again from it", exc_info=True)
        job.failed = True
        job.close()
    job.end = job.plan.end_after(job.last_activity, job.stream.steps_per_bar)
    answerer.post(on_done, job)


def _accompany(engine, job: AccompanyJob, answerer: Answerer, on_note: Callable[[AccompanyJob, Note], None]) -> None:
    """The loop: it keeps the answerer's per-token estimate (`token_seconds`) measured as it decides."""
    plan, post = job.plan, answerer.post
    bar_len = job.stream.steps_per_bar
    accompanist = job.accompanist = Accompanist(engine, job.stream, plan.options, plan.pitch_range, plan.rng,
                                                plan.velocity, plan.steering)
    margin = SCHEDULE_MARGIN_S + plan.send_ahead

    def take(message: tuple[str, object]) -> bool:
        """Take in one message; True if it was an onset (a note into the stream, rolling back)."""
        kind, value = message
        if kind == "note":
            accompanist.player_note(value)
        elif kind == "onset":
            accompanist.player_onset(*value)
        else:
            job.last_activity = max(job.last_activity, value)
        return kind == "onset"

    def drain() -> bool:
        """Take in every message waiting; True if there were onsets among them."""
        onsets = False
        while True:
            try:
                onsets |= take(job.inbox.get_nowait())
            except queue.Empty:
                return onsets

    # When the player's notes last taken in began to go in: what they cost ends with the next decide.
    taken_at: float | None = None
    # Feeding again in `settle` costs less a token than deciding (no sampling, no masks): measured
    # apart, from the first settle on.
    settle_token_s = answerer.token_seconds
    while not job.stop.is_set():
        t, view = now(), job.view
        ahead = margin + 3 * answerer.token_seconds  # how long before its onset a note must be fixed
        reach = view.position(t + ahead)  # what playback reaches before a note is scheduled
        for note in accompanist.fix(math.floor(reach)):
            post(on_note, job, note)
        end = plan.end_after(job.last_activity, bar_len)
        if t >= view.time_at(end) + END_GRACE_S and not accompanist.decided:
            if drain():  # the player played on meanwhile
                continue
            break
        step = math.floor(view.position(t))
        position, began = engine.position, time.perf_counter()
        accompanist.decide(step + plan.lookahead_steps, max(plan.join, math.floor(reach) + 1), end)
        if engine.position > position:
            answerer.token_seconds = 0.9 * answerer.token_seconds + 0.1 * (time.perf_counter() - began) / (
                engine.position - position)
        if taken_at is not None:
            accompanist.stats.redecide_seconds.append(time.perf_counter() - taken_at)
            taken_at = None
        # Sleep until the next note is due to be fixed, the horizon moves on (the next step), or
        # the stretch may end; or a message comes.
        wake = min(view.time_at(step + 1), view.time_at(end) + END_GRACE_S)
        if accompanist.decided:
            wake = min(wake, view.time_at(accompanist.decided[0].note.start) - ahead)
        if accompanist.releases:
            tokens = accompanist.settle_tokens()
            # A quiet moment: the released notes' lengths go in (fed again, and the lookahead
            # decided again). Past half the engine's reach they go in at once, quiet or not:
            # waiting longer, they would fall out of it and keep the lengths guessed at their onsets.
            if tokens >= ROLLBACK_TOKENS // 2 or now() + 2 * tokens * settle_token_s + SETTLE_MARGIN_S < wake:
                began = time.perf_counter()
                accompanist.settle()
                settle_token_s = 0.8 * settle_token_s + 0.2 * (time.perf_counter() - began) / max(tokens, 1)
                continue
        try:
            message = job.inbox.get(timeout=min(max(wake - now(), 0.0), PACING_WAIT_S))
        except queue.Empty:
            continue
        began = time.perf_counter()
        if take(message) | drain():
            taken_at = began
    for message in job.close():
        take(message)
    accompanist.finish()


def accompaniment_report(job: AccompanyJob, late_played: int, late_dropped: int) -> dict:
    """The `accompaniment_finished` event (and its log line)."""
    accompanist = job.accompanist
    stats = accompanist.stats if accompanist is not None else None

    def p99_ms(seconds: list[float]) -> float | None:
        return round(float(np.percentile(seconds, 99)) * 1000, 3) if seconds else None

    event = {
        "type": "accompaniment_finished",
        "notes": job.played,
        "end_step": job.end,
        "rollbacks": stats.count if stats else 0,
        "rollback_ms_p99": p99_ms(stats.seconds) if stats else None,
        "redecide_ms_p99": p99_ms(stats.redecide_seconds) if stats else None,
        "moved_player_notes": stats.moved if stats else 0,
        "revised_player_notes": stats.revised if stats else 0,
        "late_played": late_played,
        "late_dropped": late_dropped,
        "stopped": job.stop.is_set(),
        "failed": job.failed,
    }
    log.info("accompaniment: %d notes, %d rollbacks (event p99 %s ms, re-decided p99 %s ms), %d player's notes moved, "
             "%d lengths revised, late notes so far: %d played, %d dropped%s", job.played, event["rollbacks"],
             event["rollback_ms_p99"], event["redecide_ms_p99"], event["moved_player_notes"],
             event["revised_player_notes"], late_played, late_dropped, " (stopped)" if event["stopped"] else "")
    return event
