"""Call and response: listen to the player, answer in time, stop when interrupted.

One token stream (`TokenStream`) holds the whole conversation, the player's notes and the
model's answers, and the engine is fed the same tokens. Player notes are fed as they are
committed, so handing over costs only the few tokens still pending.

The session coordinates the parts, each with one job: the `Timeline` (grid, bar lines, time
<-> step), the `EchoFilter` (our own notes coming back), the `Listener` (the player's notes to
tokens), the `Answerer` (the engine's worker thread) and the `NoteOutput` (the answer on time).
Its `Phase` says where the exchange is: IDLE (the next onset anchors a bar), CALLING (the
player's phrase; a hand-over may be planned) or ANSWERING. When the player has been silent until
the hand-over point (the next bar line, or a number of steps) or presses the hand-over
controller, generation starts `lead_ms` early and the answer streams, note by note, to the output.

Threads: everything here runs on the event loop, which never waits for the worker.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable
from concurrent.futures import Future

import mido

from daemon.accompaniment import AccompanyJob, AccompanyPlan, accompaniment_report, accompany
from daemon.answer_loop import AnswerOptions
from daemon.answerer import Answerer, AnswerJob, AnswerPlan, answer_report
from daemon.clock import now
from daemon.codec import Note
from daemon.config import Settings, parse_pitch_range
from daemon.echo import EchoFilter
from daemon.engine import CONTEXT
from daemon.listener import Listener
from daemon.live_tokenizer import TokenStream, quantise
from daemon.output import NoteOutput
from daemon.sampling import make_generator
from daemon.timeline import Timeline

SUSTAIN_CC = 64
CLOCK_MESSAGES = {"clock", "start", "stop", "continue", "songpos"}


class Phase(enum.Enum):
    IDLE = "idle"  # no phrase in progress: the next onset anchors a bar
    CALLING = "calling"  # the player's phrase; `_next` is the planned hand-over, if any
    ANSWERING = "answering"  # `job` is generated and played; `_next` is its end, once generated
    ACCOMPANYING = "accompanying"  # mode "accompany": the model plays along (`accompaniment`)


class JamSession:
    """The listening and answering logic between the ports, the engine and the output."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings, engine,
                 send: Callable[[mido.Message], None], emit: Callable[[dict], None]) -> None:
        self.loop = loop
        self.settings = settings
        self.emit = emit
        jam = settings.jam
        self.output = NoteOutput(loop, send, jam.late_policy, jam.output_latency_ms / 1000, on_note=self._note_sent)
        self.answerer = Answerer(engine, loop.call_soon_threadsafe)
        self.timeline = Timeline(settings.tempo.bpm, settings.steps_per_bar, now())
        self.stream = TokenStream(settings.steps_per_bar, history=CONTEXT)
        self.listener = Listener()
        self.echoes = EchoFilter(jam.echo_window_ms / 1000)
        self.phase = Phase.IDLE
        self.paused = False  # no hand-overs (the player's notes are still listened to)
        self.job: AnswerJob | None = None  # only while ANSWERING
        self.accompaniment: AccompanyJob | None = None  # from its start until the worker is done with it
        self.rng = make_generator(jam.seed if jam.seed >= 0 else None)
        self.answers = 0
        self.barge_ins = 0
        self.context_dropped = 0
        self._next: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self.answerer.reset(list(self.stream.tokens))

    @property
    def stats(self) -> dict[str, int]:
        return {"answers": self.answers, "barge_ins": self.barge_ins,
                "echoes_ignored": self.echoes.ignored, "context_dropped": self.context_dropped}

    # -- settings ---------------------------------------------------------------------
    def update_settings(self, settings: Settings) -> None:
        old, self.settings = self.settings, settings
        jam = settings.jam
        if settings.tempo.bpm != old.tempo.bpm and not self.timeline.clock_present(now()):
            self.timeline.set_tempo(settings.tempo.bpm, now())
        if jam.seed != old.jam.seed and jam.seed >= 0:
            self.rng = make_generator(jam.seed)
        self.output.set_timing(jam.late_policy, jam.output_latency_ms / 1000)
        self.echoes.window_s = jam.echo_window_ms / 1000
        if jam.mode != old.jam.mode:
            self.stop_answer()  # and the accompaniment: the next note plays in the new mode

    def swap_engine(self, engine) -> Future:
        """Use another engine from the next worker job on, primed with the conversation so far."""
        job = self.accompaniment
        if job is not None:  # it plays with the old engine: stop it, and prime with the stream it hands back
            self._stop_accompaniment()
            return self.answerer.swap(engine, lambda: list(job.stream.tokens))
        return self.answerer.swap(engine, list(self.stream.tokens))

    # -- input ------------------------------------------------------------------------
    def receive(self, message: mido.Message, arrived: float) -> None:
        """Every incoming message, on the loop, with its arrival time (on now()'s clock)."""
        if message.type in CLOCK_MESSAGES:
            if self.settings.tempo.follow_clock:
                self.timeline.follow_clock(message.type, arrived, getattr(message, "pos", 0))
            return
        channel = self.settings.midi.input_channel
        if channel and getattr(message, "channel", channel - 1) != channel - 1:
            return
        t = arrived - self.settings.jam.input_latency_ms / 1000
        if message.type == "note_on" and message.velocity > 0:
            if not self.echoes.note_on_is_echo(message.note, arrived):
                self._note_on(message.note, message.velocity, t)
        elif message.type in ("note_off", "note_on"):
            if not self.echoes.note_off_is_echo(message.note):
                self._note_off(message.note, t)
        elif message.type == "control_change":
            if message.control == SUSTAIN_CC:
                self.listener.pedal(message.value >= 64, self.timeline.position(t))
            elif message.control == self.settings.jam.handover_cc and message.value >= 64:
                self._hand_over_now()

    def _note_on(self, pitch: int, velocity: int, t: float) -> None:
        if self.phase == Phase.ANSWERING:
            if not self.settings.jam.barge_in:
                return
            self._barge_in(t)
        self._cancel_next()
        if self.phase == Phase.IDLE:
            self._anchor(t)
        self.listener.note_on(pitch, velocity, self.timeline.position(t))
        self._commit(t)
        if self._ticker is None:
            self._ticker = self.loop.call_later(self.listener.commit_interval_s, self._tick)
        if self.accompanying:
            self._accompany(t)

    def _note_off(self, pitch: int, t: float) -> None:
        position = self.timeline.position(t)
        self.listener.note_off(pitch, position)
        self._commit(t)
        if self.accompanying:
            if self.accompaniment is not None:  # a release never starts one: it may end a finished stretch
                # The last step the note sounds in: its end, rounded as the tokenizer rounds it, is
                # exclusive (a release at a bar line ends the bar before it, however late it is stamped).
                self.accompaniment.activity(quantise(position) - 1)
        elif self.listener.holding(position) == 0 and self.phase == Phase.CALLING:
            self._plan_handover(position)

    @property
    def accompanying(self) -> bool:
        return self.settings.jam.mode == "accompany"

    def _anchor(self, t: float) -> None:
        """The first onset after silence: beat one of the bar after everything so far."""
        following = self.settings.tempo.follow_clock and self.timeline.clock_present(t)
        if self.settings.steps_per_bar != self.stream.steps_per_bar:
            # A new meter starts here, on a bar token of the old one: nothing is pending.
            tokens = self.stream.bar_tokens_to(self.timeline.end)
            self.stream.append(tokens)
            self.answerer.feed(tokens)
            self.stream.steps_per_bar = self.timeline.steps_per_bar = self.settings.steps_per_bar
        self.timeline.anchor(t, None if following else self.settings.tempo.bpm)
        self.listener.call_start = self.timeline.end
        self.phase = Phase.CALLING

    def _tick(self) -> None:
        self._ticker = None
        if not self.listener.busy:
            return
        t = now()
        self._commit(t)
        self._ticker = self.loop.call_later(self.listener.commit_interval_s, self._tick)
        if self.phase == Phase.CALLING and self._next is None and self.listener.stuck(self.timeline.position(t)):
            self._plan_handover(max(self.listener.last_release, self.timeline.position(t)))

    def _commit(self, t: float) -> None:
        self._append_player_notes(self.listener.commit(self.timeline.position(t)))

    def _append_player_notes(self, notes: list[Note]) -> None:
        if self.accompaniment is not None:  # its worker places them (or hands them back when done)
            for note in notes:
                self.timeline.extend_to(note.start)
            self.accompaniment.offer_notes(notes)
            return
        tokens: list[int] = []
        for note in notes:
            if not self.stream.can_take(note):
                # Only after a barge-in: a player note quantised before a note the answer played.
                self.context_dropped += 1
                continue
            note_tokens = self.stream.note_tokens(note)
            self.stream.append(note_tokens)
            tokens += note_tokens
            self.timeline.extend_to(note.start)
        if tokens:
            self.answerer.feed(tokens)

    def _note_sent(self, pitch: int, velocity: int, due: float, sent: float) -> None:
        self.echoes.sent(pitch, sent)
        if self.job is not None:
            self.job.note_sent(due, sent)

    # -- hand-over ------------------------------------------------------------------
    def _plan_handover(self, released: float) -> None:
        if self.paused or self.accompanying:
            return
        jam = self.settings.jam
        start = self.timeline.handover_step(released, jam.wait, jam.lead_ms / 1000)
        self._cancel_next()
        when = self.timeline.time_at(start) - jam.lead_ms / 1000
        self._next = self.loop.call_at(max(when, now()), self._start_answer, start)

    def _hand_over_now(self) -> None:
        if self.phase != Phase.CALLING or self.paused or self.accompanying:
            return
        t = now()
        self.listener.last_release = self.timeline.position(t)
        self._cancel_next()
        self._start_answer(math.ceil(self.timeline.position(t + self.settings.jam.lead_ms / 1000)))

    def _start_answer(self, start: int) -> None:
        self._next = None
        position = self.timeline.position(now())
        if self.phase != Phase.CALLING or self.listener.holding(position) or self.paused:
            return
        self._append_player_notes(self.listener.finish_call(position, start))
        jam, bar = self.settings.jam, self.stream.steps_per_bar
        bars = self.listener.answer_bars(jam, bar)
        end = self.timeline.bar_at_or_before(start - 1) + bar + bars * bar  # from the bar line at or after start
        options = AnswerOptions(jam.temperature, jam.top_p, jam.max_note_steps)
        plan = AnswerPlan(start, end, bars, self.listener.velocity(jam.velocity), self.timeline.view, options,
                          jam.lookahead_steps, self.output.send_ahead, self.rng)
        self.job = AnswerJob(plan, self.stream.copy())
        self.phase = Phase.ANSWERING
        self.answers += 1
        self.emit({"type": "answer_started", "bars": bars, "start_step": start, "end_step": end})
        self.emit({"type": "state"})
        self.answerer.answer(self.job, self._answer_note, self._answer_generated)

    # -- accompanying (loop; the worker's side is daemon/accompaniment.py) ---------------
    def _accompany(self, t: float) -> None:
        """An onset in accompany mode: tell the running accompaniment, or start one."""
        position = quantise(self.timeline.position(t))
        job = self.accompaniment
        if job is not None:
            job.activity(position)
            return
        join = self.timeline.join_step(t)
        if self.paused or join is None:
            return
        jam = self.settings.jam
        plan = AccompanyPlan(join, self.timeline.bar_origin, jam.accompany_tail_bars, self.listener.velocity(jam.velocity),
                             parse_pitch_range(jam.accompany_range), self.timeline.view,
                             AnswerOptions(jam.temperature, jam.top_p, jam.max_note_steps), jam.lookahead_steps,
                             self.output.send_ahead, self.rng)
        self.accompaniment = job = AccompanyJob(plan, self.stream.copy(), position)
        self.phase = Phase.ACCOMPANYING
        self.emit({"type": "accompaniment_started", "join_step": join})
        self.emit({"type": "state"})
        answerer = self.answerer
        answerer.run(accompany, job, answerer.post, self._accompany_note, self._accompaniment_done,
                     lambda: answerer.token_seconds)

    def _accompany_note(self, job: AccompanyJob, note: Note) -> None:
        if job.stop.is_set():
            return
        self.output.play(self.settings.midi.output_channel - 1, note.pitch, note.velocity,
                         self.timeline.time_at(note.start), self.timeline.time_at(note.start + note.duration))
        job.played += 1
        self.timeline.extend_to(note.start)

    def _accompaniment_done(self, job: AccompanyJob) -> None:
        """The worker is done: its stream (which the engine holds) is the conversation's."""
        job.done = True
        self.stream = job.stream
        self.timeline.end = max(self.timeline.end, job.end)
        if self.accompaniment is job:
            self.accompaniment = None
        self._append_player_notes(job.leftover)
        if self.phase == Phase.ACCOMPANYING:
            self.phase = Phase.CALLING if self.listener.busy else Phase.IDLE
        self.emit(accompaniment_report(job, self.output.stats.late_played, self.output.stats.late_dropped))
        self.emit({"type": "state"})
        if self.phase == Phase.CALLING and self.accompanying and self.listener.tokenizer.keys_down:
            self._accompany(now())  # keys still down: the player goes on

    def _stop_accompaniment(self) -> None:
        """Stop the accompaniment now and release its notes; the worker hands its stream back."""
        job = self.accompaniment
        if job is None or job.stop.is_set():
            return
        job.stop.set()
        self.output.release_all()
        if self.phase == Phase.ACCOMPANYING:
            self.phase = Phase.CALLING

    # -- answering (loop) -------------------------------------------------------------
    def _answer_note(self, job: AnswerJob, note: Note, tokens: list[int]) -> None:
        if job.stop.is_set():
            return
        on = self.timeline.time_at(note.start)
        off = self.timeline.time_at(note.start + note.duration)
        self.output.play(self.settings.midi.output_channel - 1, note.pitch, note.velocity, on, off)
        job.scheduled.append((note, tokens, on))

    def _answer_generated(self, job: AnswerJob) -> None:
        job.done = True
        if job.stop.is_set():
            return
        for _, tokens, _ in job.scheduled:
            self.stream.append(tokens)
        self.timeline.end = job.plan.end
        if job.answer.tail:
            # Tokens the model was fed after its last note: the engine has them, the stream must too.
            self.stream.append(job.answer.tail)
        finish = max(self.timeline.time_at(job.plan.end), self.output.last_off_time)
        self._next = self.loop.call_at(finish, self._answer_finished, job)

    def _answer_finished(self, job: AnswerJob) -> None:
        self._next = None
        if self.job is job:
            self.job = None
            self.phase = Phase.IDLE
        self._report(job)

    def _barge_in(self, t: float) -> None:
        """The player plays: stop the answer, keep what was played."""
        self.stop_answer(t)
        self.barge_ins += 1
        # A new call begins in this bar (it sets the next answer's length).
        self.listener.call_start = self.timeline.bar_at_or_before(self.timeline.position(t))

    def stop_answer(self, t: float | None = None) -> None:
        """End the answer (or accompaniment) now: release its notes; the notes already played stay
        in the context."""
        self._stop_accompaniment()
        job = self.job
        if job is None:
            return
        t = now() if t is None else t
        job.stop.set()
        job.barged_in = True
        self.output.release_all()
        self._cancel_next()
        for note, tokens, on in job.scheduled:
            if on - self.output.send_ahead <= t:  # sent by now
                self.stream.append(tokens)
                self.timeline.extend_to(note.start)
        self.answerer.reset(list(self.stream.tokens))
        self.job = None
        self.phase = Phase.CALLING
        self._report(job)

    def _report(self, job: AnswerJob) -> None:
        self.emit(answer_report(job, self.output.stats.late_played, self.output.stats.late_dropped))
        self.emit({"type": "state"})

    # -- control ----------------------------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        self._cancel_next()
        self.stop_answer()
        self.output.panic()

    def resume(self) -> None:
        self.paused = False

    def panic(self) -> None:
        """Silence: stop the answer and send the output's panic sequence."""
        self.stop_answer()
        self.output.panic()

    def close(self) -> None:
        """Stop everything (the daemon is exiting): nothing is left sounding."""
        self.stop_answer()
        for handle in (self._next, self._ticker):
            if handle is not None:
                handle.cancel()
        self.answerer.close()
        self.output.panic()

    def _cancel_next(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
