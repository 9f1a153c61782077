"""Our own answer coming back on the input (a synth's MIDI thru, a patchbay loop) is not the player.

A note-on of a pitch we sent within the last `window_s` is taken as its echo, once per note
sent; the note-off that follows it is the echo's too. Times are on the daemon's clock (`now()`).
"""

from __future__ import annotations

from collections import deque

SENT_MEMORY = 64  # note-ons per pitch remembered (a flood must not grow memory)


class EchoFilter:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.ignored = 0
        self._sent: dict[int, deque[float]] = {}  # pitch -> times we sent it
        self._held: dict[int, int] = {}  # pitch -> echoed note-ons whose note-off is ours too

    def sent(self, pitch: int, t: float) -> None:
        """We sent a note-on of `pitch` at time t."""
        self._sent.setdefault(pitch, deque(maxlen=SENT_MEMORY)).append(t)

    def note_on_is_echo(self, pitch: int, arrived: float) -> bool:
        sent = self._sent.get(pitch)
        while sent and arrived - sent[0] > self.window_s:
            sent.popleft()
        if not sent or arrived < sent[0]:
            return False
        sent.popleft()
        self._held[pitch] = self._held.get(pitch, 0) + 1
        self.ignored += 1
        return True

    def note_off_is_echo(self, pitch: int) -> bool:
        if not self._held.get(pitch):
            return False
        self._held[pitch] -= 1
        return True
