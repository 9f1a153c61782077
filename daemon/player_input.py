"""Which incoming messages are the player's, and when they were played: MIDI clock messages go to
the tempo side; of the rest, only the input channel's; our own notes coming back through a synth's
MIDI thru (echoes) are dropped; every time is moved back by the input's latency. Loop thread.
"""

from __future__ import annotations

from collections.abc import Callable

import mido

from daemon.config import Settings
from daemon.echo import EchoFilter
from daemon.tempo_keeper import TempoKeeper

CLOCK_MESSAGES = {"clock", "start", "stop", "continue", "songpos"}


class PlayerInput:
    def __init__(self, settings: Settings, echoes: EchoFilter, tempo: TempoKeeper,
                 note_on: Callable[[int, int, float], None], note_off: Callable[[int, float], None],
                 control: Callable[[int, int, float], None]) -> None:
        self.settings = settings
        self.echoes = echoes
        self.tempo = tempo
        self.note_on, self.note_off, self.control = note_on, note_off, control  # (.., t: when it was played)

    def receive(self, message: mido.Message, arrived: float) -> None:
        """Every incoming message, on the loop, with its arrival time (on now()'s clock)."""
        if message.type in CLOCK_MESSAGES:
            self.tempo.follow_clock(message.type, arrived, getattr(message, "pos", 0))
            return
        channel = self.settings.midi.input_channel
        if channel and getattr(message, "channel", channel - 1) != channel - 1:
            return
        t = arrived - self.settings.jam.input_latency_ms / 1000
        if message.type == "note_on" and message.velocity > 0:
            if not self.echoes.note_on_is_echo(message.note, arrived):
                self.note_on(message.note, message.velocity, t)
        elif message.type in ("note_off", "note_on"):
            if not self.echoes.note_off_is_echo(message.note):
                self.note_off(message.note, t)
        elif message.type == "control_change":
            self.control(message.control, message.value, t)
