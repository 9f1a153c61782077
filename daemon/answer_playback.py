"""An answer on the event loop: its notes to the output at their grid times, and what comes back
(each note sent, the answer stopped, withdrawn or finished, its report). Owns the answer's
`NoteOutput` and the `Metronome` (the clicks, on an output of their own): whatever the session
sends goes out here, and panic and a reopened port silence both.
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
from daemon.metronome import Metronome
from daemon.output import NoteOutput, silencing_messages
from daemon.timeline import Timeline

SILENCE_AGAIN_S = 0.2  # see silence_output


class AnswerPlayback:
    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[mido.Message], None], settings: Settings,
                 timeline: Timeline, conversation: Conversation, echoes: EchoFilter,
                 emit: Callable[[dict], None]) -> None:
        jam = settings.jam
        self.loop = loop
        self.send = send
        self.output = NoteOutput(loop, send, jam.late_policy, jam.output_latency_ms / 1000, on_note=self._note_sent)
        self.metronome = Metronome(loop, send, settings, timeline, echoes)
        self.channel = settings.midi.output_channel - 1  # 0-based
        self.timeline = timeline
        self.conversation = conversation
        self.echoes = echoes
        self.emit = emit
        self.job: AnswerJob | None = None  # the answer whose notes are sent now

    def update_settings(self, settings: Settings) -> None:
        self.output.set_timing(settings.jam.late_policy, settings.jam.output_latency_ms / 1000)
        self.metronome.update_settings(settings)
        self.channel = settings.midi.output_channel - 1

    def panic(self) -> None:
        """Silence now: the metronome stops, every note and click is released, then their channels' CCs."""
        self.metronome.panic()
        self.output.panic()

    def silence_output(self, again: bool = True) -> None:
        """An output port (re)opened or (re)connected: what an earlier run or connection left
        sounding (a crash, a lost port: notes whose note-off never came) ends before anything
        else is sent. Sent directly, not through NoteOutput, whose count knows nothing of them.

        JACK may add a new connection to its graph a cycle after the client first writes to it,
        and lose that write (1 in 30 fresh connections, measured on the dummy driver): the
        silence is sent once more a little later, unless a note has gone out meanwhile."""
        for message in silencing_messages({self.channel, *self.output.channels_used, *self.metronome.output.channels_used}):
            self.send(message)
        if again:
            self.loop.call_later(SILENCE_AGAIN_S, self._silence_again, self.output.stats.notes)

    def _silence_again(self, notes_before: int) -> None:
        if self.output.stats.notes == notes_before and not self.output.busy:
            self.silence_output(again=False)

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
        job.barged_in = not job.failed  # a failed answer is ended here too
        self.output.release_all()
        self.metronome.cut_count_in()
        self.conversation.add_played(job, t, self.output.send_ahead)
        self.report(job)

    def withdraw(self, job: AnswerJob) -> None:
        """Drop an answer no note of which was sent yet: unheard, unreported."""
        job.stop.set()
        self.output.release_all()
        self.metronome.cut_count_in()
        self.conversation.resync()

    def start(self, job: AnswerJob, tempo: dict) -> None:
        """The answer is heard from now on: its notes go out, and `answer_started` (with the
        tempo it was read at, `TempoKeeper.answer_tempo`) is reported."""
        self.job = job
        self.emit({"type": "answer_started", "bars": job.plan.bars, "start_step": job.plan.start,
                   "end_step": job.plan.end, **tempo})
        self.emit({"type": "state"})

    def report(self, job: AnswerJob) -> None:
        self.emit(answer_report(job, self.output.stats.late_played, self.output.stats.late_dropped))
        self.emit({"type": "state"})

    def _note_sent(self, pitch: int, velocity: int, due: float, sent: float) -> None:
        self.echoes.sent(pitch, sent)
        if self.job is not None:
            self.job.note_sent(due, sent)
