"""Controls on the instrument: knobs move live settings, buttons fire actions, program changes
select presets, and MIDI learn binds the next controller that moves.

A setting follows its knob's 0..127 linearly over its range ([controls] min..max, else what the
setting allows); an action fires when its controller crosses the middle (64) upwards. Learned
bindings are kept in the state folder (controls.json), never in the user's config file, and win
over the config's binding of the same controller or target.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import mido

from daemon.config import CONTROL_ACTIONS, LIVE_SETTINGS, MIDDLE, ControlBinding, live_setting_named, setting_bounds

log = logging.getLogger("antiphon.controls")
LEARNED_FILE = "controls.json"


class ControlTarget(Protocol):
    def apply_setting(self, name: str, value: Any) -> Any: ...
    def command(self, action: str) -> Any: ...
    def select_preset_number(self, number: int) -> Any: ...


def learnable(name: str) -> str:
    """The canonical target for a name MIDI learn may bind; ValueError naming what is allowed."""
    if name in CONTROL_ACTIONS:
        return name
    setting = live_setting_named(name)
    if setting is None or setting.type is str:
        knobs = [n for n, s in LIVE_SETTINGS.items() if s.type is not str]
        raise ValueError(f"cannot learn {name!r}: not a setting a knob can move ({', '.join(knobs)}) "
                         f"nor an action ({', '.join(CONTROL_ACTIONS)})")
    return setting.name


def knob_value(binding: ControlBinding, value: int) -> float | int:
    """A controller's 0..127 on the binding's range, a whole number for a whole-number setting."""
    exact = binding.low + (binding.high - binding.low) * value / 127
    return round(exact) if LIVE_SETTINGS[binding.target].type is int else round(exact, 4)


def learned_binding(target: str, cc: int) -> ControlBinding:
    if target in CONTROL_ACTIONS:
        return ControlBinding(target, cc)
    low, high = setting_bounds(LIVE_SETTINGS[target])
    return ControlBinding(target, cc, low, high)


class Controls:
    """The controller map of a running daemon (on the event loop)."""

    def __init__(self, target: ControlTarget, emit: Callable[[dict], None], configured: tuple[ControlBinding, ...],
                 state: Path | None) -> None:
        self.target = target
        self.emit = emit
        self.learned_path = state / LEARNED_FILE if state is not None else None
        self.learned: dict[str, int] = self._read_learned()
        self.learning: str | None = None
        self.by_cc: dict[int, ControlBinding] = {}
        self._last: dict[int, int] = {}  # the controller's last value: actions fire on the way up
        self.configure(configured)

    def configure(self, configured: tuple[ControlBinding, ...]) -> None:
        """The config's bindings (at start and on reload), then the learned ones over them."""
        bindings = {b.cc: b for b in configured}
        for target, cc in self.learned.items():
            bindings = {c: b for c, b in bindings.items() if b.target != target}
            bindings[cc] = learned_binding(target, cc)
        self.by_cc = bindings

    def map(self) -> dict[str, int]:
        """{target: controller} as the state document shows it."""
        return {b.target: cc for cc, b in sorted(self.by_cc.items())}

    # -- MIDI learn -------------------------------------------------------------------
    def learn(self, name: str) -> None:
        """The next controller that moves is bound to `name` (ValueError on a name that cannot be)."""
        self.learning = learnable(name)
        log.info("MIDI learn: move the controller for %s", self.learning)

    def _bind(self, cc: int) -> None:
        target, self.learning = self.learning, None
        self.learned = {t: c for t, c in self.learned.items() if c != cc and t != target}
        self.learned[target] = cc
        self.by_cc = {c: b for c, b in self.by_cc.items() if c != cc and b.target != target}
        self.by_cc[cc] = learned_binding(target, cc)
        self._write_learned()
        log.info("MIDI learn: controller %d now moves %s", cc, target)
        self.emit({"type": "learned", "target": target, "cc": cc})
        self.emit({"type": "state"})

    def _read_learned(self) -> dict[str, int]:
        if self.learned_path is None or not self.learned_path.exists():
            return {}
        try:
            document = json.loads(self.learned_path.read_text())
            learned = {learnable(t): int(cc) for t, cc in document.items()}
            if any(not 0 <= cc <= 127 or cc == MIDDLE for cc in learned.values()):
                raise ValueError("a controller outside 0..127 or the sustain pedal's")
        except (OSError, ValueError, TypeError, AttributeError) as error:
            log.warning("ignoring learned controls in %s: %s", self.learned_path, error)
            return {}
        return learned

    def _write_learned(self) -> None:
        if self.learned_path is None:
            log.warning("MIDI learn: no state folder, the binding lasts until the daemon stops")
            return
        temporary = self.learned_path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(self.learned, indent=1) + "\n")
            os.replace(temporary, self.learned_path)
        except OSError as error:
            log.warning("MIDI learn: cannot keep the binding in %s (%s)", self.learned_path, error)

    # -- input ------------------------------------------------------------------------
    def receive(self, message: mido.Message) -> None:
        """A control change or program change from the player's channel."""
        if message.type == "program_change":
            self._try(self.target.select_preset_number, message.program)
            return
        cc, value = message.control, message.value
        if cc == MIDDLE:  # the sustain pedal is the listener's
            return
        previous, self._last[cc] = self._last.get(cc, 0), value
        if self.learning is not None:  # the move that is learned does nothing else (a button would fire)
            self._bind(cc)
            return
        binding = self.by_cc.get(cc)
        if binding is None:
            return
        if binding.target in CONTROL_ACTIONS:
            if previous < MIDDLE <= value:
                self._try(self.target.command, binding.target)
        else:
            self._try(self.target.apply_setting, binding.target, knob_value(binding, value))

    @staticmethod
    def _try(call: Any, *args: Any) -> None:
        try:
            call(*args)
        except ValueError as error:  # a preset number past the list, weights that do not load...
            log.warning("controller ignored: %s", error)
