"""The conversation's token stream, the player's notes and the model's answers, kept in step with
the engine: every token appended is fed to it, or the engine is reset to the stream. Loop thread;
the engine's work is submitted to the `Answerer`'s worker, in order. While an accompaniment runs,
its worker holds the stream: the player's notes go to it, and its stream comes back at its end.
"""

from __future__ import annotations

from daemon.accompaniment import AccompanyJob
from daemon.answerer import Answerer, AnswerJob
from daemon.codec import Note
from daemon.engine import CONTEXT
from daemon.live_tokenizer import TokenStream
from daemon.timeline import Timeline


class Conversation:
    def __init__(self, answerer: Answerer, timeline: Timeline) -> None:
        self.answerer = answerer
        self.timeline = timeline
        self.stream = TokenStream(timeline.steps_per_bar, history=CONTEXT)
        self.context_dropped = 0  # player notes that could not follow what the answer played
        self.accompaniment: AccompanyJob | None = None  # the job holding the stream now
        # (start, pitch) of notes an accompaniment put in at their onsets and ended before their
        # release: in the stream already, they do not go in again.
        self.entered: set[tuple[int, int]] = set()
        self.resync()

    @property
    def tokens(self) -> list[int]:
        return list(self.stream.tokens)

    def resync(self) -> None:
        """The engine forgets what it was fed beyond the stream (an answer that stopped)."""
        self.answerer.reset(self.tokens)

    def change_meter(self, steps_per_bar: int) -> None:
        """A new meter from the stream's end on (a bar line of the old one: nothing is pending)."""
        tokens = self.stream.bar_tokens_to(self.timeline.end)
        self.stream.append(tokens)
        self.answerer.feed(tokens)
        self.stream.steps_per_bar = self.timeline.steps_per_bar = steps_per_bar

    def add_player_notes(self, notes: list[Note]) -> None:
        if self.entered:
            notes = [note for note in notes if not self._entered(note)]
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

    def _entered(self, note: Note) -> bool:
        key = (note.start, note.pitch)
        if key in self.entered:
            self.entered.remove(key)
            return True
        return False

    def take_stream(self, job: AccompanyJob) -> None:
        """An accompaniment is done: its stream, which the engine holds, is the conversation's,
        and the notes it put in whose release is still to come are in it already."""
        if self.accompaniment is job:
            self.accompaniment = None
        self.stream = job.stream
        self.timeline.end = max(self.timeline.end, job.end)
        recent = self.timeline.end - 4 * self.stream.steps_per_bar  # a release never comes: it is forgotten
        self.entered = {key for key in self.entered if key[0] >= recent}
        if job.accompanist is not None:
            self.entered |= job.accompanist.unreleased()

    def add_answer(self, job: AnswerJob) -> None:
        """The whole answer (the engine has been fed it already); the stream ends at its bar line."""
        for _, tokens, _ in job.scheduled:
            self.stream.append(tokens)
        self.timeline.end = job.plan.end
        if job.answer.tail:
            # Tokens the model was fed after its last note: the engine has them, the stream must too.
            self.stream.append(job.answer.tail)

    def add_played(self, job: AnswerJob, t: float, send_ahead: float) -> None:
        """An answer stopped at time t: the notes sent by then stay, the engine is reset to them."""
        for note, tokens, on in job.scheduled:
            if on - send_ahead <= t:
                self.stream.append(tokens)
                self.timeline.extend_to(note.start)
        self.resync()
