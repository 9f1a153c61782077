"""Accompany mode on the event loop: a stretch of accompaniment starts when the player plays, is
told the player's events, plays its notes on time, and hands its stream back when it ends.

The worker's side is daemon/accompaniment.py, the token logic daemon/accompanist.py. From a
job's start until it is done the worker holds the conversation's stream: the `Conversation`
passes the player's committed notes to the job meanwhile, and takes the stream back at the end.

Threads: the event loop only.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from daemon.accompaniment import AccompanyJob, AccompanyPlan, accompaniment_report, accompany
from daemon.answer_playback import AnswerPlayback
from daemon.answerer import Answerer
from daemon.clock import now
from daemon.codec import Note
from daemon.config import Settings, parse_pitch_range
from daemon.conversation import Conversation
from daemon.listener import Listener
from daemon.live_tokenizer import quantise
from daemon.steering import accompaniment_options
from daemon.timeline import Timeline


class Accompanying:
    def __init__(self, answerer: Answerer, timeline: Timeline, conversation: Conversation, listener: Listener,
                 playback: AnswerPlayback, emit: Callable[[dict], None], on_end: Callable[[], None]) -> None:
        self.answerer = answerer
        self.timeline = timeline
        self.conversation = conversation
        self.listener = listener
        self.playback = playback
        self.emit = emit
        self.on_end = on_end  # a job is done (the session's phase follows)
        self.job: AccompanyJob | None = None  # from its start until the worker is done with it
        self._followed: int | None = None  # the step of the latest onset the grid followed (follow mode)

    def onset(self, settings: Settings, pitch: int, velocity: int, t: float, rng: np.random.Generator) -> None:
        """A key goes down at time t: it goes into the accompaniment's stream at once; with no
        accompaniment running, one starts, joining on the first beat from t. In follow mode the
        grid follows the player's onsets."""
        step = quantise(self.timeline.position(t))
        job = self.job or self._start(settings, t, step, rng)
        if self._following(settings, t):
            self._follow(job, step, t)  # for the steps to come: this one is where the listener put it
        job.activity(step)
        job.onset(step, pitch, velocity)

    def join(self, settings: Settings, events: list[tuple[str, tuple, float]], rng: np.random.Generator) -> None:
        """Follow mode: the player's tempo and beat have just been read (the grid is theirs): an
        accompaniment starts, joining on the next beat, with the player's notes so far (the
        recorded `events`) going in at their onsets; the releases among them come as the
        listener commits them."""
        t = now()
        job = self._start(settings, t, quantise(self.timeline.position(t)), rng)
        for kind, arguments, at in events:
            step = quantise(self.timeline.position(at))
            if kind == "note_on":
                pitch, velocity = arguments
                self._followed = step
                job.onset(step, pitch, velocity)
            job.activity(step if kind == "note_on" else step - 1)

    def _following(self, settings: Settings, t: float) -> bool:
        return settings.tempo.tempo_mode == "follow" and not self.timeline.clock_present(t)

    def _follow(self, job: AccompanyJob, step: int, t: float) -> None:
        """The grid follows the player's onset (a chord's first note only), and the worker's view with it."""
        if step == self._followed:
            return  # a chord's later note, or a key struck again within the step
        self._followed = step
        if self.timeline.follow(t):
            job.view = self.timeline.view

    def release(self, position: float) -> None:
        """A key comes up: the player is active up to the last step the note sounds in (its end,
        rounded as the tokenizer rounds it, is exclusive: a release at a bar line ends the bar
        before it, however late it is stamped). A release never starts an accompaniment."""
        if self.job is not None:
            self.job.activity(quantise(position) - 1)

    def held(self, position: float) -> None:
        """Keys are still down (the call feed's ticker): the player is still playing, up to the
        step a release now would end its notes at (rounded as a release is: a key let go just
        after a bar line ends its note on it)."""
        if self.job is not None:
            self.job.activity(quantise(position) - 1)

    def stop(self) -> None:
        """Stop the accompaniment now and release its notes; the worker hands its stream back."""
        job = self.job
        if job is None or job.stop.is_set():
            return
        job.stop.set()
        self.playback.output.release_all()

    def swap_engine(self, engine) -> Future | None:
        """A running accompaniment plays with the old engine: it stops, and the new one is primed
        with the stream it hands back (the worker runs the swap after the job). None: none runs."""
        job = self.job
        if job is None:
            return None
        self.stop()
        return self.answerer.swap(engine, lambda: list(job.stream.tokens))

    def _start(self, settings: Settings, t: float, step: int, rng: np.random.Generator) -> AccompanyJob:
        jam, timeline = settings.jam, self.timeline
        join = timeline.join_step(t)
        pitch_range = parse_pitch_range(jam.accompany_range)
        plan = AccompanyPlan(join, timeline.bar_origin, jam.accompany_tail_bars, self.listener.velocity(jam.velocity),
                             pitch_range,
                             *accompaniment_options(jam, timeline.steps_per_bar, pitch_range, self.listener.call_notes),
                             jam.accompany_lookahead_steps, self.playback.output.send_ahead, rng)
        self.job = job = AccompanyJob(plan, self.conversation.stream.copy(), step, timeline.view)
        self.conversation.accompaniment = job
        self._followed = None
        self.emit({"type": "accompaniment_started", "join_step": join, "bpm": round(timeline.grid.bpm, 2),
                   "tempo_source": timeline.source})
        self.emit({"type": "state"})
        answerer = self.answerer
        answerer.run(accompany, job, answerer, self._play, self._done)
        return job

    def _play(self, job: AccompanyJob, note: Note) -> None:
        if job.stop.is_set():
            return
        self.playback.output.play(self.playback.channel, note.pitch, note.velocity, self.timeline.time_at(note.start),
                                  self.timeline.time_at(note.start + note.duration))
        job.played += 1
        self.timeline.extend_to(note.start)

    def _done(self, job: AccompanyJob) -> None:
        """The worker is done: its stream (which the engine holds) is the conversation's again."""
        job.done = True
        if self.job is job:
            self.job = None
        self.conversation.take_stream(job)
        if job.failed:
            self.playback.output.release_all()
            self.conversation.resync()
        self.conversation.add_player_notes(job.leftover)
        stats = self.playback.output.stats
        self.emit(accompaniment_report(job, stats.late_played, stats.late_dropped))
        self.emit({"type": "state"})
        self.on_end()
