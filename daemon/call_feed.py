"""The player's call into the conversation as it is played: each note joins the token stream
(and so the engine) as soon as nothing the player can still do can precede it.

Notes settle at the player's own events and, while some are pending (keys down, the pedal),
with the passing of time: a ticker commits every `Listener.commit_interval_s` and tells the
session the time, so it can see keys held past the point where they hold back a hand-over. In
follow mode the call waits instead: it is tokenized at the hand-over, on the grid read from it.

Threads: the event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daemon.clock import now
from daemon.conversation import Conversation
from daemon.listener import Listener
from daemon.tempo_keeper import TempoKeeper
from daemon.timeline import Timeline


class CallFeed:
    """The call's settled notes to the conversation, at the player's events and on a ticker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: Listener, conversation: Conversation,
                 timeline: Timeline, tempo: TempoKeeper, on_tick: Callable[[float], None]) -> None:
        self.loop = loop
        self.listener = listener
        self.conversation = conversation
        self.timeline = timeline
        self.tempo = tempo
        self.on_tick = on_tick  # each tick that found notes pending, with its time
        self._ticker: asyncio.TimerHandle | None = None

    def commit(self, t: float) -> None:
        """The notes settled by time t join the conversation (not in follow mode's call)."""
        if not self.tempo.reading:
            self.conversation.add_player_notes(self.listener.commit(self.timeline.position(t)))

    def keep_ticking(self) -> None:
        """A note began: the ticker runs until nothing sounds or waits to be committed."""
        if self._ticker is None:
            self._ticker = self.loop.call_later(self.listener.commit_interval_s, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        if not self.listener.busy:
            return
        t = now()
        self.commit(t)
        self._ticker = self.loop.call_later(self.listener.commit_interval_s, self._tick)
        self.on_tick(t)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
