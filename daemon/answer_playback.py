"""An answer on the event loop: its notes to the output at their grid times, and what comes back
(each note sent, the answer stopped, withdrawn or finished, its report). Owns the `NoteOutput`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import mido

from daemon.answerer import AnswerJob, answer_report
from daemon.codec import Note
from daemon.config import Settings
from daemon.conversation import Conversation
from daemon.echo import EchoFilter
from daemon.output import NoteOutput
from daemon.timeline import Timeline


class AnswerPlayback:
    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[mido.Message], None], settings: Settings,
                 timeline: Timeline, conversation: Conversation, echoes: EchoFilter,
                 emit: Callable[[dict], None]) -> None:
        jam = settings.jam
        self.output = NoteOutput(loop, send, jam.late_policy, jam.output_latency_ms / 1000, on_note=self._note_sent)
        self.channel = settings.midi.output_channel - 1  # 0-based
        self.timeline = timeline
        self.conversation = conversation
        self.echoes = echoes
        self.emit = emit
        self.job: AnswerJob | None = None  # the answer whose notes are sent now

    def update_settings(self, settings: Settings) -> None:
        self.output.set_timing(settings.jam.late_policy, settings.jam.output_latency_ms / 1000)
        self.channel = settings.midi.output_channel - 1

    def play(self, job: AnswerJob, note: Note, tokens: list[int]) -> None:
        """One note the worker generated (dropped when its answer was stopped meanwhile)."""
        if job.stop.is_set():
            return
        on = self.timeline.time_at(note.start)
        off = self.timeline.time_at(note.start + note.duration)
        self.output.play(self.channel, note.pitch, note.velocity, on, off)
        job.scheduled.append((note, tokens, on))

    def finish_time(self, job: AnswerJob) -> float:
        """When the generated answer is over: its bar line, or its last note-off if later."""
        return max(self.timeline.time_at(job.plan.end), self.output.last_off_time)

    def stop(self, job: AnswerJob, t: float) -> None:
        """End the answer at time t: its notes released, those sent by then kept in the context."""
        job.stop.set()
        job.barged_in = True
        self.output.release_all()
        self.conversation.add_played(job, t, self.output.send_ahead)
        self.report(job)

    def withdraw(self, job: AnswerJob) -> None:
        """Drop an answer no note of which was sent yet: unheard, unreported."""
        job.stop.set()
        self.output.release_all()
        self.conversation.resync()

    def report(self, job: AnswerJob) -> None:
        self.emit(answer_report(job, self.output.stats.late_played, self.output.stats.late_dropped))
        self.emit({"type": "state"})

    def _note_sent(self, pitch: int, velocity: int, due: float, sent: float) -> None:
        self.echoes.sent(pitch, sent)
        if self.job is not None:
            self.job.note_sent(due, sent)
