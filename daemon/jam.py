"""Call and response: listen to the player, answer in time, stop when interrupted.

One token stream (`TokenStream`) holds the whole conversation, the player's notes and the
model's answers, and the engine is fed the same tokens. Player notes are fed as they are
committed, so handing over costs only the few tokens still pending.

The session coordinates the parts, each with one job: the `Timeline` (grid, bar lines, time
<-> step), the `EchoFilter` (our own notes coming back), the `Listener` (the player's notes to
tokens), the `CallFeed` (the call's notes into the conversation as they settle), the
`TempoKeeper` (the grid each call is read on: follow mode, taps, the count-in), the `Answerer`
(the engine's worker thread), the `AnswerPlayback` (the answer on time, and its report) and, in
accompany mode, `Accompanying` (the model plays along while the player plays: no hand-overs).
Its `Phase` says where the exchange is: IDLE (the next onset anchors a bar), CALLING (the
player's phrase; a hand-over may be planned), HANDING_OVER, ANSWERING or ACCOMPANYING. When the player has
been silent until the hand-over point (the next bar line, or a number of steps) or presses the
hand-over controller, generation starts `lead_ms` early and the answer streams, note by note, to
the output. Where the call's rhythm has the player's next note due on that bar line, only the bar
line can tell whether the call goes on: the answer is prepared all the same, begins after the bar
line, and is heard only if no onset came by the time one on the bar line would have arrived
(HANDING_OVER); an onset withdraws it unheard and the call goes on.

Every interruption (pause, panic, a lost port) ends the call in progress and any answer and
returns to IDLE: the next onset begins a new call on a grid of its own.

Threads: everything here runs on the event loop, which never waits for the worker.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable
from concurrent.futures import Future

import mido

from daemon.accompanying import Accompanying
from daemon.answer_playback import AnswerPlayback
from daemon.answerer import Answerer, AnswerJob
from daemon.call_feed import CallFeed
from daemon.clock import now
from daemon.config import Settings
from daemon.conversation import Conversation
from daemon.echo import EchoFilter
from daemon.handover import hand_over
from daemon.listener import Listener
from daemon.player_input import PlayerInput
from daemon.sampling import make_generator
from daemon.tempo_keeper import TempoKeeper
from daemon.timeline import Timeline

SUSTAIN_CC = 64


class Phase(enum.Enum):
    IDLE = "idle"  # no phrase in progress: the next onset anchors a bar
    CALLING = "calling"  # the player's phrase; `_next` is the planned hand-over, if any
    HANDING_OVER = "handing over"  # `job` is prepared, unheard; `_next` commits it unless the player plays
    ANSWERING = "answering"  # `job` is generated and played; `_next` is its end, once generated
    ACCOMPANYING = "accompanying"  # mode "accompany": the model plays along (`accompaniment.job`)


class JamSession:
    """The listening and answering logic between the ports, the engine and the output."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings, engine,
                 send: Callable[[mido.Message], None], emit: Callable[[dict], None]) -> None:
        self.loop = loop
        self.settings = settings
        self.emit = emit
        jam = settings.jam
        self.answerer = Answerer(engine, loop.call_soon_threadsafe)
        self.timeline = Timeline(settings.tempo.bpm, settings.steps_per_bar, now())
        self.conversation = Conversation(self.answerer, self.timeline)
        self.listener = Listener()
        self.echoes = EchoFilter(jam.echo_window_ms / 1000)
        self.playback = AnswerPlayback(loop, send, settings, self.timeline, self.conversation, self.echoes, emit)
        self.output = self.playback.output
        self.tempo = TempoKeeper(settings, self.timeline, self.listener, self.playback.metronome, emit)
        self.feed = CallFeed(loop, self.listener, self.conversation, self.timeline, self.tempo, self._keys_held)
        self.input = PlayerInput(settings, self.echoes, self.tempo, self._note_on, self._note_off, self._control)
        self.receive = self.input.receive  # every incoming message, with its arrival time (on now()'s clock)
        self.accompaniment = Accompanying(self.answerer, self.timeline, self.conversation, self.listener,
                                          self.playback, emit, self._accompaniment_ended)
        self.phase = Phase.IDLE
        self.paused = False  # no hand-overs (the player's notes are still listened to)
        self.job: AnswerJob | None = None  # only while HANDING_OVER or ANSWERING
        self.rng = make_generator(jam.seed if jam.seed >= 0 else None)
        self.answers = 0
        self.barge_ins = 0
        self.withdrawn = 0
        self._next: asyncio.TimerHandle | None = None

    @property
    def stats(self) -> dict[str, int]:
        return {"answers": self.answers, "barge_ins": self.barge_ins,
                "echoes_ignored": self.echoes.ignored, "context_dropped": self.conversation.context_dropped,
                "answers_withdrawn": self.withdrawn}

    # -- settings ---------------------------------------------------------------------
    def update_settings(self, settings: Settings) -> None:
        old, self.settings = self.settings, settings
        jam = settings.jam
        self.tempo.update_settings(settings)
        if jam.seed != old.jam.seed and jam.seed >= 0:
            self.rng = make_generator(jam.seed)
        self.playback.update_settings(settings)
        self.input.settings = settings
        self.echoes.window_s = jam.echo_window_ms / 1000
        if jam.mode != old.jam.mode:
            self._interrupt()  # what plays stops; the next note plays in the new mode

    @property
    def accompanying(self) -> bool:
        return self.settings.jam.mode == "accompany"

    def swap_engine(self, engine) -> Future:
        """Use another engine from the next worker job on, primed with the conversation so far
        (or with the accompaniment's stream, once it has stopped)."""
        return self.accompaniment.swap_engine(engine) or self.answerer.swap(engine, self.conversation.tokens)

    # -- input (the player's, from PlayerInput) ---------------------------------------
    def _control(self, control: int, value: int, t: float) -> None:
        if control == SUSTAIN_CC:
            self.listener.pedal(value >= 64, self.timeline.position(t), t)
        elif control == self.settings.jam.handover_cc and value >= 64:
            self._hand_over_now()
        elif value >= 64 and self.phase == Phase.IDLE:  # tap tempo and count-in: between exchanges
            self.tempo.control(control, t)

    def _note_on(self, pitch: int, velocity: int, t: float) -> None:
        if self.phase is Phase.HANDING_OVER:
            self._withdraw()  # the call goes on
        elif self.phase is Phase.ANSWERING:
            if not self.settings.jam.barge_in:
                return
            self._barge_in(t)
        self._cancel_next()
        if self.accompanying and self.tempo.reading and self.tempo.stale(t):
            self._end_call()  # too few notes to read a tempo from, then a pause: that was the whole call
        if self.phase == Phase.IDLE:
            self._anchor(t)
        self.listener.note_on(pitch, velocity, self.timeline.position(t), t)
        if self.accompanying and not self.paused:
            self._accompany(pitch, velocity, t)
        self.feed.commit(t)
        self.feed.keep_ticking()

    def _note_off(self, pitch: int, t: float) -> None:
        position = self.timeline.position(t)
        self.listener.note_off(pitch, position, t)
        self.feed.commit(t)
        if self.accompanying:
            self.accompaniment.release(position)
        elif self.listener.holding(position) == 0 and self.phase == Phase.CALLING:
            if self.tempo.preview():
                position = self.timeline.position(t)
            self._plan_handover(position)

    def _accompany(self, pitch: int, velocity: int, t: float) -> None:
        """An onset in accompany mode: into the accompaniment; in follow mode, the model joins
        once the player's tempo is read (until then the call is only recorded)."""
        if not self.tempo.reading:
            self.accompaniment.onset(self.settings, pitch, velocity, t, self.rng)
            self.phase = Phase.ACCOMPANYING
            return
        events = self.tempo.read_to_join()
        if events is not None:
            self.accompaniment.join(self.settings, events, self.rng)
            self.phase = Phase.ACCOMPANYING

    def _anchor(self, t: float) -> None:
        """The first onset after silence: beat one of the bar after everything so far."""
        if self.settings.steps_per_bar != self.timeline.steps_per_bar:
            self.conversation.change_meter(self.settings.steps_per_bar)
        self.tempo.anchor(t, clicks=not self.paused)
        self.listener.begin_call(self.timeline.end)
        self.phase = Phase.CALLING

    def count_in(self) -> None:
        """One bar of clicks at the tempo in use (`TempoKeeper.count_in`). Only between exchanges (IDLE)."""
        if self.phase == Phase.IDLE:
            self.tempo.count_in()

    def _keys_held(self, t: float) -> None:
        """Keys are still down at t (the feed's ticker): once none holds back a hand-over, plan one."""
        if self.accompanying:
            self.accompaniment.held(self.timeline.position(t))
        elif self.phase == Phase.CALLING and self._next is None and self.listener.stuck(self.timeline.position(t)):
            self._plan_handover(max(self.listener.last_release, self.timeline.position(t)))

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
        self._start_answer(math.ceil(self.timeline.position(t + self.settings.jam.lead_ms / 1000)), asked=True)

    def _start_answer(self, start: int, asked: bool = False) -> None:
        """`start`: the hand-over point; `asked`: by the hand-over controller, not by silence."""
        self._next = None
        position = self.timeline.position(now())
        if self.phase != Phase.CALLING or self.listener.holding(position) or self.paused:
            return
        if self.tempo.reading:
            start = self.tempo.read_call(start)
            position = self.timeline.position(now())
        self.conversation.add_player_notes(self.listener.finish_call(position, start))
        handover = hand_over(start, asked, self.settings.jam, self.timeline, self.listener, self.output.send_ahead,
                             self.rng, self.tempo.counts_in)
        self.tempo.count_in_answer(handover.plan.start)
        self.job = AnswerJob(handover.plan, self.conversation.stream.copy())
        self.answerer.answer(self.job, self.playback.play, self._answer_generated)
        if handover.commit_at is None:
            self._commit_answer()
        else:
            self.phase = Phase.HANDING_OVER
            self._next = self.loop.call_at(handover.commit_at, self._commit_answer)

    def _commit_answer(self) -> None:
        """The hand-over stands: the answer is heard."""
        self._next = None
        job = self.job
        self.phase = Phase.ANSWERING
        self.answers += 1
        self.playback.start(job, self.tempo.answer_tempo())
        if job.done:
            self._take_answer(job)

    def _withdraw(self) -> None:
        """The player plays on before the prepared answer was heard: it goes, unheard and unreported."""
        self._cancel_next()
        self.playback.withdraw(self.job)  # none of its notes is due yet
        self.job = None
        self.phase = Phase.CALLING
        self.withdrawn += 1

    # -- answering (loop) -------------------------------------------------------------
    def _answer_generated(self, job: AnswerJob) -> None:
        job.done = True
        if job.failed:
            # Ended now: what was sent stays (the engine is reset to the stream), and the next
            # onset begins a new call. One stopped before it failed was ended by its stop, whose
            # reset of the engine runs on the worker after this job.
            if self.job is job:
                self._cancel_next()
                self.job = None
                if self.phase is Phase.HANDING_OVER:
                    self.playback.withdraw(job)  # unheard
                else:
                    self.playback.stop(job, now())
                self.phase = Phase.IDLE
        elif not job.stop.is_set() and self.phase is Phase.ANSWERING:
            self._take_answer(job)

    def _take_answer(self, job: AnswerJob) -> None:
        """The whole answer is generated: it joins the stream; the phase ends with its last note."""
        self.conversation.add_answer(job)
        self._next = self.loop.call_at(self.playback.finish_time(job), self._answer_finished, job)

    def _answer_finished(self, job: AnswerJob) -> None:
        self._next = None
        if self.job is job:
            self.job = None
            self.phase = Phase.IDLE
        self.playback.report(job)

    def _barge_in(self, t: float) -> None:
        """The player plays: stop the answer, keep what was played."""
        self._stop_answer(t)
        self.barge_ins += 1
        # A new call begins in this bar (it sets the next answer's length).
        self.listener.begin_call(self.timeline.bar_at_or_before(self.timeline.position(t)))

    def _stop_answer(self, t: float) -> None:
        """End the answer now: release its notes; the notes already played stay in the context."""
        self._cancel_next()
        job, self.job = self.job, None
        self.phase = Phase.CALLING
        self.playback.stop(job, t)

    def _accompaniment_ended(self) -> None:
        if self.phase is Phase.ACCOMPANYING:
            self.phase = Phase.CALLING if self.listener.busy else Phase.IDLE

    # -- control ----------------------------------------------------------------------
    def pause(self) -> None:
        """No hand-overs until resume(); the player is still listened to (the context)."""
        self.paused = True
        self._interrupt()
        self.playback.panic()

    def resume(self) -> None:
        self.paused = False
        if self.phase is Phase.CALLING:  # played while paused: context, not a call to answer
            self._end_call()

    def panic(self) -> None:
        """Silence (also when a port is lost): the session starts over from IDLE."""
        self._interrupt()
        self.playback.panic()

    def close(self) -> None:
        """Stop everything (the daemon is exiting): nothing is left sounding."""
        self._interrupt()
        self.feed.close()
        self.answerer.close()
        self.playback.panic()

    def _interrupt(self) -> None:
        """Whatever the phase: no hand-over planned, no answer prepared or playing, no
        accompaniment, no call."""
        self._cancel_next()
        self.accompaniment.stop()
        if self.phase is Phase.HANDING_OVER:
            self._withdraw()
        elif self.phase is Phase.ANSWERING:
            self._stop_answer(now())
        self._end_call()

    def _end_call(self) -> None:
        """The call in progress ends now (keys still down included) and joins the context; the
        next onset begins a new call, anchored afresh."""
        position = self.timeline.position(now())
        self.tempo.abandon_call()
        self.conversation.add_player_notes(self.listener.finish_call(position, math.ceil(position)))
        self.phase = Phase.IDLE

    def _cancel_next(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None
