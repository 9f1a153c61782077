"""Call and response: listen to the player, answer in time, stop when interrupted.

One token stream (`TokenStream`) holds the whole conversation, the player's notes and the
model's answers, and the engine is fed the same tokens. Player notes are fed as they are
committed, so handing over costs only the few tokens still pending.

Timeline: the first onset after silence anchors beat one of a bar (on a fixed-tempo grid, or on
the external clock's grid with its bar phase kept); silences between exchanges are collapsed, so
the next phrase starts at the bar line after the previous answer. When the player has been
silent until the hand-over point (the next bar line, or a number of steps) or presses the
hand-over controller, generation starts `lead_ms` early and the answer streams, note by note,
to the scheduler. The sampler's mask keeps the strict grammar, puts bar lines where the meter
puts them, and forbids onsets that would already be due before they could be sent.

Threads: the engine lives on one worker thread (all feeds, resets and answers run there in
order); everything else runs on the event loop, which never waits for the worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import mido
import numpy as np

from daemon.clock import ClockFollower, TempoGrid, step_seconds
from daemon.codec import BAR, DURATION_BASE, MAX_OFFSET, OFFSET_BASE, Note, is_duration, is_offset, token_value
from daemon.config import Settings
from daemon.engine import CONTEXT
from daemon.grammar import HAVE_OFFSET, HAVE_PITCH, NEED_OFFSET, GrammarState, next_mask
from daemon.live_tokenizer import LiveTokenizer, TokenStream
from daemon.output import NoteOutput
from daemon.sampling import make_generator, sample

log = logging.getLogger("antiphon.jam")

SUSTAIN_CC = 64
CLOCK_MESSAGES = {"clock", "start", "stop", "continue", "songpos"}
VELOCITY_MEMORY = 16  # player notes the answer's velocity follows
DEFAULT_VELOCITY = 80
COMMIT_INTERVAL_S = 0.05  # how often held-back notes are re-checked while the player plays
# Time, besides the tokens still to sample, between choosing an onset and its note-on callback;
# generous because a busy machine can stall the inference thread for tens of milliseconds.
SCHEDULE_MARGIN_S = 0.025
WORKER_NICENESS = 5  # how much nicer the inference thread is than the event loop

LISTENING, ANSWERING = "listening", "answering"


def answer_mask(state: GrammarState, bar: int, steps_per_bar: int, earliest: int, end: int, longest: int) -> np.ndarray:
    """The grammar's mask narrowed for an answer: bar lines only where the meter puts them, notes
    only at steps in [earliest, end), durations at most `longest` and never past `end`."""
    mask = next_mask(state).copy()
    if state.phase == NEED_OFFSET:
        offsets = np.arange(MAX_OFFSET + 1)
        starts = bar + offsets
        notes = (offsets < steps_per_bar) & (starts >= earliest) & (starts < end)
        mask[OFFSET_BASE : OFFSET_BASE + MAX_OFFSET + 1] &= notes | (offsets == steps_per_bar)
    elif state.phase == HAVE_OFFSET:
        if state.offset == steps_per_bar:
            mask[:] = False
            mask[BAR] = True
        else:
            mask[BAR] = False
    elif state.phase == HAVE_PITCH:
        cap = max(1, min(longest, end - (bar + state.offset)))
        mask[DURATION_BASE + cap :] = False
    return mask


def _lower_this_threads_priority() -> None:
    """Inference yields the CPU to the event loop: a note due now beats the next token."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS)
    except OSError as error:  # not on Linux, or a sandbox that forbids it: timing gets worse, that is all
        log.debug("cannot lower the inference thread's priority: %s", error)


@dataclass
class AnswerJob:
    start: int  # stream step of the answer's first possible onset
    end: int  # stream step of the bar line that ends it
    bars: int
    velocity: int
    stream: TokenStream  # the stream as the answer extends it (the worker's copy)
    prefix: list[int]  # bar tokens up to the start, fed before generating
    stop: threading.Event = field(default_factory=threading.Event)
    notes: list[tuple[Note, list[int], float]] = field(default_factory=list)  # (note, its tokens, on time)
    tail: list[int] = field(default_factory=list)  # tokens after the last note (never played)
    tokens: int = 0
    busy_s: float = 0.0
    played: int = 0
    first_error_ms: float | None = None
    worst_error_ms: float = 0.0  # the answer note sent furthest from its grid time, either way
    barged_in: bool = False
    done: bool = False


class JamSession:
    """The listening and answering logic between the ports, the engine and the output."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        engine,
        output: NoteOutput,
        emit: Callable[[dict], None],
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.engine = engine
        self.output = output
        self.emit = emit
        output.on_note = self._note_sent
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="antiphon-engine",
                                         initializer=_lower_this_threads_priority)
        self.clock = ClockFollower()
        self.stream = TokenStream(settings.steps_per_bar, history=CONTEXT)
        self.tokenizer = LiveTokenizer()
        self.grid = TempoGrid(loop.time(), step_seconds(settings.tempo.bpm))
        self.shift = 0.0  # stream step = grid position + shift
        self.phase = LISTENING
        self.idle = True  # no phrase in progress: the next onset anchors a bar
        self.paused = False
        self.stream_end = 0  # the first bar line after everything in the stream
        self.bar_origin = 0  # a bar line of the current meter (bar lines are every steps_per_bar from it)
        self.call_start = 0  # stream bar line where the current call began
        self.job: AnswerJob | None = None
        self.rng = make_generator(settings.jam.seed if settings.jam.seed >= 0 else None)
        self.velocities: deque[int] = deque(maxlen=VELOCITY_MEMORY)
        self.echoes: dict[int, deque[float]] = {}  # pitch -> times we sent it
        self.echo_held: dict[int, int] = {}  # pitch -> echoed note-ons whose note-off is ours too
        self.stats = {"answers": 0, "barge_ins": 0, "echoes_ignored": 0, "context_dropped": 0}
        self.token_seconds = 0.002  # running estimate of one sample+feed, for the onset margin
        self._handover: asyncio.TimerHandle | None = None
        self._finish: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._last_release = 0.0
        self._submit(self._reset_engine, list(self.stream.tokens))

    # -- settings ---------------------------------------------------------------------
    def update_settings(self, settings: Settings) -> None:
        old = self.settings
        self.settings = settings
        if settings.tempo.bpm != old.tempo.bpm and not self.clock.present(self.loop.time()):
            self.grid = self.grid.with_bpm(settings.tempo.bpm, self.loop.time())
        if settings.jam.seed != old.jam.seed and settings.jam.seed >= 0:
            self.rng = make_generator(settings.jam.seed)
        self.output.late_policy = settings.jam.late_policy
        self.output.send_ahead = settings.jam.output_latency_ms / 1000

    def swap_engine(self, engine) -> Future:
        """Use another engine from the next worker job on, primed with the conversation so far."""
        tokens = list(self.stream.tokens)

        def swap() -> None:
            engine.reset(tokens)
            self.engine = engine

        return self._submit(swap)

    # -- input ------------------------------------------------------------------------
    def receive(self, message: mido.Message, arrived: float) -> None:
        """Every incoming message, on the loop, with its arrival time."""
        if message.type in CLOCK_MESSAGES:
            self._clock(message, arrived)
            return
        channel = self.settings.midi.input_channel
        if channel and getattr(message, "channel", channel - 1) != channel - 1:
            return
        t = arrived - self.settings.jam.input_latency_ms / 1000
        if message.type == "note_on" and message.velocity > 0:
            if self._is_echo(message.note, arrived):
                return
            self._note_on(message.note, message.velocity, t)
        elif message.type in ("note_off", "note_on"):
            if self.echo_held.get(message.note):
                self.echo_held[message.note] -= 1
                return
            self._note_off(message.note, t)
        elif message.type == "control_change":
            if message.control == SUSTAIN_CC:
                self.tokenizer.pedal(message.value >= 64, self.position(t))
            elif message.control == self.settings.jam.handover_cc and message.value >= 64:
                self._hand_over_now()

    def position(self, t: float) -> float:
        """Stream step (float) at loop time t."""
        return self.grid.position(t) + self.shift

    def time_at(self, step: float) -> float:
        return self.grid.time_at(step - self.shift)

    def _clock(self, message: mido.Message, t: float) -> None:
        if not self.settings.tempo.follow_clock:
            return
        kind = message.type
        self.clock.handle(kind, t, getattr(message, "pos", 0))
        if kind == "clock" and self.clock.present(t):
            grid = self.clock.grid()
            if grid is not None:
                self.grid = grid

    def _note_on(self, pitch: int, velocity: int, t: float) -> None:
        if self.phase != LISTENING:
            if not self.settings.jam.barge_in and self.phase == ANSWERING:
                return
            self._barge_in(t)
        if self._handover is not None:
            self._handover.cancel()
            self._handover = None
        if self.idle:
            self._anchor(t)
        self.velocities.append(velocity)
        self.tokenizer.note_on(pitch, velocity, self.position(t))
        self._commit(t)
        if self._ticker is None:
            self._ticker = self.loop.call_later(COMMIT_INTERVAL_S, self._tick)

    def _note_off(self, pitch: int, t: float) -> None:
        position = self.position(t)
        self.tokenizer.note_off(pitch, position)
        self._last_release = position
        self._commit(t)
        if self.tokenizer.holding(position) == 0 and self.phase == LISTENING and not self.idle:
            self._plan_handover(position)

    def _anchor(self, t: float) -> None:
        """The first onset after silence: beat one of the bar after everything so far."""
        now_clock = self.settings.tempo.follow_clock and self.clock.present(t)
        if not now_clock:
            self.grid = TempoGrid(t, step_seconds(self.settings.tempo.bpm))
        if self.settings.steps_per_bar != self.stream.steps_per_bar:
            # A new meter starts here, on a bar token of the old one: nothing is pending.
            tokens = self.stream.bar_tokens_to(self.stream_end)
            self.stream.append(tokens)
            self._submit(self._feed, tokens)
            self.stream.steps_per_bar = self.settings.steps_per_bar
        self.bar_origin = self.stream_end
        bar = self.stream.steps_per_bar
        onset_bar = math.floor(round(self.grid.position(t)) / bar) * bar
        self.shift = self.stream_end - onset_bar
        self.call_start = self.stream_end
        self.idle = False

    def _tick(self) -> None:
        self._ticker = None
        if self.tokenizer.sounding or self.tokenizer.pending:
            now = self.loop.time()
            self._commit(now)
            self._ticker = self.loop.call_later(COMMIT_INTERVAL_S, self._tick)
            stuck = self.tokenizer.keys_down and not self.tokenizer.holding(self.position(now))
            if stuck and self.phase == LISTENING and not self.idle and self._handover is None:
                self._plan_handover(max(self._last_release, self.position(now)))

    def _commit(self, t: float) -> None:
        notes = self.tokenizer.commit(self.position(t))
        if notes:
            self._append_player_notes(notes)

    def _append_player_notes(self, notes: list[Note]) -> None:
        tokens: list[int] = []
        for note in notes:
            if not self.stream.can_take(note):
                # Only after a barge-in: a player note quantised before a note the answer played.
                self.stats["context_dropped"] += 1
                continue
            note_tokens = self.stream.note_tokens(note)
            self.stream.append(note_tokens)
            tokens += note_tokens
            self.stream_end = max(self.stream_end, self._bar_after(note.start))
        if tokens:
            self._submit(self._feed, tokens)

    def _bar_after(self, step: int) -> int:
        """The first bar line after `step` (bar lines of the current meter, from bar_origin)."""
        bar = self.stream.steps_per_bar
        return self.bar_origin + ((step - self.bar_origin) // bar + 1) * bar

    def _bar_at_or_before(self, step: float) -> int:
        bar = self.stream.steps_per_bar
        return self.bar_origin + math.floor((step - self.bar_origin) / bar) * bar

    def _is_echo(self, pitch: int, arrived: float) -> bool:
        sent = self.echoes.get(pitch)
        window = self.settings.jam.echo_window_ms / 1000
        while sent and arrived - sent[0] > window:
            sent.popleft()
        if not sent or arrived < sent[0]:
            return False
        sent.popleft()
        self.echo_held[pitch] = self.echo_held.get(pitch, 0) + 1
        self.stats["echoes_ignored"] += 1
        return True

    def _note_sent(self, pitch: int, velocity: int, due: float, sent: float) -> None:
        self.echoes.setdefault(pitch, deque(maxlen=64)).append(sent)
        job = self.job
        if job is not None:
            job.played += 1
            error_ms = (sent - due) * 1000
            if job.first_error_ms is None:
                job.first_error_ms = error_ms
            job.worst_error_ms = max(job.worst_error_ms, abs(error_ms))

    # -- hand-over ------------------------------------------------------------------
    def _plan_handover(self, released: float) -> None:
        if self.paused:
            return
        wait = self.settings.jam.wait
        if wait == "bar":
            # The bar line must leave time to prepare: a release just before it (legato into
            # the next bar) is not silence until that bar line.
            lead_steps = self.settings.jam.lead_ms / 1000 / self.grid.step
            start = self._bar_after(math.floor(released + lead_steps))
        else:
            start = math.ceil(released + wait)
        self._schedule_handover(start)

    def _schedule_handover(self, start: int) -> None:
        if self._handover is not None:
            self._handover.cancel()
        when = self.time_at(start) - self.settings.jam.lead_ms / 1000
        self._handover = self.loop.call_at(max(when, self.loop.time()), self._start_answer, start)

    def _hand_over_now(self) -> None:
        if self.phase != LISTENING or self.idle or self.paused:
            return
        lead = self.settings.jam.lead_ms / 1000
        self._last_release = self.position(self.loop.time())
        if self._handover is not None:
            self._handover.cancel()
        self._handover = None
        self._start_answer(math.ceil(self.position(self.loop.time() + lead)))

    def _answer_bars(self) -> int:
        jam = self.settings.jam
        if jam.answer_bars:
            return jam.answer_bars
        bar = self.stream.steps_per_bar
        call = math.ceil(max(self._last_release - self.call_start, 1) / bar)
        return max(1, min(call, jam.max_answer_bars))

    def _start_answer(self, start: int) -> None:
        self._handover = None
        if self.phase != LISTENING or self.tokenizer.holding(self.position(self.loop.time())) or self.paused:
            return
        now = self.loop.time()
        # Keys still down here were held past the cap or lost their note-off: they end now.
        self.tokenizer.release_keys(self.position(now))
        self.tokenizer.release_pedal(self.position(now))
        self._append_player_notes(self.tokenizer.commit(max(self.position(now), start) + 1))
        bar = self.stream.steps_per_bar
        bars = self._answer_bars()
        end = self._bar_at_or_before(start - 1) + bar + bars * bar  # from the bar line at or after start
        stream = self.stream.copy()
        prefix = stream.bar_tokens_to(start)
        stream.append(prefix)
        velocity = self._velocity()
        job = AnswerJob(start, end, bars, velocity, stream, prefix)
        self.job = job
        self.phase = ANSWERING
        self.stats["answers"] += 1
        self.emit({"type": "answer_started", "bars": bars, "start_step": start, "end_step": end})
        self.emit({"type": "state"})
        self._submit(self._generate, job)

    def _velocity(self) -> int:
        fixed = self.settings.jam.velocity
        if fixed != "follow":
            return int(fixed)
        if not self.velocities:
            return DEFAULT_VELOCITY
        return int(round(sum(self.velocities) / len(self.velocities)))

    # -- answering (worker thread) ---------------------------------------------------
    def _generate(self, job: AnswerJob) -> None:
        engine = self.engine
        jam = self.settings.jam
        started = time.perf_counter()
        if job.prefix:
            engine.feed(job.prefix)
        job.busy_s += time.perf_counter() - started
        stream = job.stream
        bar_len = stream.steps_per_bar
        pending: list[int] = list(job.prefix)  # committed to the stream with the first note played
        while not job.stop.is_set():
            state = stream.state
            if state.phase == NEED_OFFSET and self._ahead(job, stream):
                continue
            margin = SCHEDULE_MARGIN_S + 3 * self.token_seconds + self.output.send_ahead
            earliest = max(job.start, math.ceil(self.position(time.monotonic() + margin)))
            begun = time.perf_counter()
            mask = answer_mask(state, stream.last_bar, bar_len, earliest, job.end, jam.max_note_steps)
            token = sample(engine.logits, mask, jam.temperature, jam.top_p, self.rng)
            if is_offset(token) and token_value(token) == bar_len and stream.last_bar + bar_len >= job.end:
                break  # the bar line that ends the answer: the next phrase writes it
            engine.feed([token])
            stream.append([token])
            pending.append(token)
            elapsed = time.perf_counter() - begun
            job.busy_s += elapsed
            job.tokens += 1
            self.token_seconds = 0.9 * self.token_seconds + 0.1 * elapsed
            if is_duration(token):
                last = stream.last_note
                note = Note(last[0], last[1], token_value(token), job.velocity)
                self.loop.call_soon_threadsafe(self._answer_note, job, note, pending)
                pending = []
        job.tail = pending
        self.loop.call_soon_threadsafe(self._answer_generated, job)

    def _ahead(self, job: AnswerJob, stream: TokenStream) -> bool:
        """Wait (briefly, interruptibly) while generation runs more than the lookahead ahead."""
        generated = stream.last_bar + max(stream.state.last_offset, 0)
        lead = generated - self.settings.jam.lookahead_steps
        due = self.time_at(lead)
        wait = due - time.monotonic()
        if wait <= 0:
            return False
        job.stop.wait(min(wait, 0.05))
        return True

    # -- answering (loop) -------------------------------------------------------------
    def _answer_note(self, job: AnswerJob, note: Note, tokens: list[int]) -> None:
        if job.stop.is_set():
            return
        on = self.time_at(note.start)
        off = self.time_at(note.start + note.duration)
        channel = self.settings.midi.output_channel - 1
        self.output.play(channel, note.pitch, note.velocity, on, off)
        job.notes.append((note, tokens, on))

    def _answer_generated(self, job: AnswerJob) -> None:
        job.done = True
        if job.stop.is_set():
            return
        for _, tokens, _ in job.notes:
            self.stream.append(tokens)
        self.stream_end = job.end
        if job.tail:
            # Tokens the model was fed after its last note: the engine has them, the stream must too.
            self.stream.append(job.tail)
        finish = max(self.time_at(job.end), self.output.last_off_time)
        self._finish = self.loop.call_at(finish, self._answer_finished, job)

    def _answer_finished(self, job: AnswerJob) -> None:
        self._finish = None
        if self.job is job:
            self.job = None
            self.phase = LISTENING
            self.idle = True
        self._report(job)

    def _report(self, job: AnswerJob) -> None:
        music_s = (job.end - job.start) * self.grid.step
        rate = job.tokens / job.busy_s if job.busy_s > 0 else 0.0
        consumed = job.tokens / music_s if music_s > 0 else 0.0
        event = {
            "type": "answer_finished",
            "notes": job.played,
            "bars": job.bars,
            "latency_ms": None if job.first_error_ms is None else round(job.first_error_ms, 3),
            "worst_timing_error_ms": round(job.worst_error_ms, 3),
            "tokens": job.tokens,
            "tokens_per_s": round(rate, 1),
            "realtime_factor": round(rate / consumed, 2) if consumed else None,
            "late_played": self.output.stats.late_played,
            "late_dropped": self.output.stats.late_dropped,
            "barged_in": job.barged_in,
        }
        log.info(
            "answer: %d notes, %d bars, first note %s ms, worst %.3f ms, %d tokens at %.0f tok/s, late notes so "
            "far: %d played, %d dropped%s",
            job.played, job.bars, event["latency_ms"], job.worst_error_ms, job.tokens, rate, event["late_played"],
            event["late_dropped"], " (barged in)" if job.barged_in else "",
        )
        self.emit(event)
        self.emit({"type": "state"})

    def _barge_in(self, t: float) -> None:
        """The player plays: drop the hand-over or stop the answer, keep what was played."""
        if self._handover is not None:
            self._handover.cancel()
            self._handover = None
        job = self.job
        if job is None or self.phase != ANSWERING:
            self.phase = LISTENING
            return
        self.stop_answer(t)
        self.stats["barge_ins"] += 1
        # A new call begins in this bar (it sets the next answer's length).
        self.call_start = self._bar_at_or_before(self.position(t))

    def stop_answer(self, t: float | None = None) -> None:
        """End the answer now: release its notes; the notes already played stay in the context."""
        job = self.job
        if job is None:
            return
        t = self.loop.time() if t is None else t
        job.stop.set()
        job.barged_in = True
        self.output.release_all()
        if self._finish is not None:
            self._finish.cancel()
            self._finish = None
        played = [(note, tokens) for note, tokens, on in job.notes if on - self.output.send_ahead <= t]
        for note, tokens in played:
            self.stream.append(tokens)
            self.stream_end = max(self.stream_end, self._bar_after(note.start))
        self._submit(self._reset_engine, list(self.stream.tokens))
        self.job = None
        self.phase = LISTENING
        self._report(job)

    # -- control ----------------------------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        if self._handover is not None:
            self._handover.cancel()
            self._handover = None
        self.stop_answer()
        self.output.panic()

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        for handle in (self._handover, self._finish, self._ticker):
            if handle is not None:
                handle.cancel()
        if self.job is not None:
            self.job.stop.set()
        self.worker.shutdown(wait=False, cancel_futures=True)

    # -- worker jobs ------------------------------------------------------------------
    def _submit(self, function, *args) -> Future:
        future = self.worker.submit(function, *args)
        future.add_done_callback(self._worker_failed)
        return future

    @staticmethod
    def _worker_failed(future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("inference failed: %s", future.exception(), exc_info=future.exception())

    def _feed(self, tokens: list[int]) -> None:
        self.engine.feed(tokens)

    def _reset_engine(self, tokens: list[int]) -> None:
        self.engine.reset(tokens)
