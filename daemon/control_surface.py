"""What the outside may ask of the running daemon: change a live setting, fire an action, select
a preset, MIDI-learn a controller, load other weights.

The MQTT bridge and the controls call these on `JamApp`, which hands them to its
`ControlSurface`; the surface owns what only these requests change (the preset selected last,
the weights `next-weights` steps through, the weights swap under way) and reaches the rest of
the daemon through the small `Daemon` protocol, so the app's lifecycle and the requests read
apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from daemon.config import CONTROL_ACTIONS, LIVE_SETTINGS, Settings, with_setting
from daemon.controls import Controls
from daemon.engine import Engine
from daemon.jam import JamSession
from daemon.paths import KINDS, weights_folder
from daemon.weights import WeightsError, check_weights_folder

log = logging.getLogger("antiphon")


def check_weights(weights: str) -> tuple[Path, str]:
    """(folder, model kind) of a usable weights folder; raises ValueError naming what is wrong."""
    folder = weights_folder(weights)
    try:
        config, _ = check_weights_folder(folder)
    except WeightsError as error:
        raise ValueError(str(error)) from None
    return folder, config.kind


def load_engine(weights: str, device: str, precision: str, kernel: str) -> Engine:
    """The engine for these settings; raises ValueError naming what is wrong."""
    folder, _ = check_weights(weights)
    try:
        return Engine.load(folder, None if device == "auto" else device, precision=precision, kernel=kernel)
    except WeightsError as error:
        raise ValueError(str(error)) from None


def weights_cycle(configured: str) -> list[str]:
    """The weights next-weights steps through: the configured ones, then the shipped ones."""
    return list(dict.fromkeys([configured, *KINDS]))


class Daemon(Protocol):
    """The running daemon as the surface sees it (JamApp)."""

    settings: Settings
    session: JamSession | None
    controls: Controls | None
    emit: Callable[[dict], None]

    def use_settings(self, settings: Settings) -> None: ...


class ControlSurface:
    """Requests from the MQTT bridge and the controls, checked before anything changes."""

    def __init__(self, daemon: Daemon, preset: str = "") -> None:
        self.daemon = daemon
        self.preset = preset  # the preset selected last ("" none)
        self.weights_cycle = weights_cycle(daemon.settings.model.weights)
        self._swap: asyncio.Task | None = None

    def apply_setting(self, name: str, value: Any) -> asyncio.Task | None:
        """Change one live setting (config.LIVE_SETTINGS); ValueError (changing nothing) on a bad name or value.

        A weights change is checked at once and loaded in a worker thread; the returned task
        finishes when the new model answers (or raises ValueError if it cannot be loaded)."""
        if name == "weights":
            if not isinstance(value, str) or not value:
                raise ValueError("weights must be 'transformer', 'lstm' or a weights folder")
            check_weights(value)
            return self.start_swap(value)
        if name not in LIVE_SETTINGS:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join(LIVE_SETTINGS)}")
        self.daemon.use_settings(with_setting(self.daemon.settings, LIVE_SETTINGS[name].section, name, value))
        return None

    def command(self, action: str) -> None:
        session = self.daemon.session
        if session is None:
            raise ValueError("the daemon is still starting")
        if action == "pause":
            session.pause()
        elif action == "resume":
            session.resume()
        elif action == "panic":
            session.panic()
        elif action == "count-in":
            session.count_in()
        elif action == "next-weights":
            cycle = self.weights_cycle
            current = self.daemon.settings.model.weights
            self.apply_setting("weights", cycle[(cycle.index(current) + 1) % len(cycle)] if current in cycle else cycle[0])
        else:
            raise ValueError(f"unknown action {action!r}; known: {', '.join(CONTROL_ACTIONS)}")
        self.daemon.emit({"type": "state"})

    def learn(self, name: str) -> None:
        """MIDI learn: the next controller that moves is bound to this setting or action."""
        if self.daemon.controls is None:
            raise ValueError("the daemon is still starting")
        self.daemon.controls.learn(name)

    def select_preset(self, name: str) -> asyncio.Task | None:
        """Apply a [presets.NAME] table; ValueError (changing nothing) on an unknown name or weights that
        cannot be loaded. Returns the weights swap's task when the preset changes the weights."""
        presets = self.daemon.settings.presets
        preset = next((p for p in presets if p.name == name), None)
        if preset is None:
            known = ", ".join(p.name for p in presets) or "none in the config"
            raise ValueError(f"no preset {name!r}; known: {known}")
        values = dict(preset.values)
        if "weights" in values:
            check_weights(values["weights"])
        settings = self.daemon.settings
        for key, value in values.items():
            if key != "weights":
                settings = with_setting(settings, LIVE_SETTINGS[key].section, key, value)
        self.preset = name
        log.info("preset %s", name)
        self.daemon.use_settings(settings)
        if "weights" in values and values["weights"] != self.daemon.settings.model.weights:
            return self.start_swap(values["weights"])
        return None

    def select_preset_number(self, number: int) -> asyncio.Task | None:
        """Program change `number` (0 = the first preset in the file; keyboards often show it as 1)."""
        presets = self.daemon.settings.presets
        if not 0 <= number < len(presets):
            raise ValueError(f"program change {number}: there are {len(presets)} presets (0..{len(presets) - 1})")
        return self.select_preset(presets[number].name)

    def discovery_options(self) -> tuple[list[str], list[str]]:
        """The weights a selector offers (the current ones first) and the presets' names."""
        weights = list(dict.fromkeys([self.daemon.settings.model.weights, *self.weights_cycle]))
        return weights, [p.name for p in self.daemon.settings.presets]

    def start_swap(self, weights: str) -> asyncio.Task:
        """Load `weights` in a worker thread and answer with them once loaded; a swap under way is
        cancelled. The settings name the new weights only once they answer."""
        daemon = self.daemon

        async def swap() -> None:
            model = daemon.settings.model
            engine = await asyncio.to_thread(load_engine, weights, model.device, model.precision, model.kernel)
            await asyncio.wrap_future(daemon.session.swap_engine(engine))
            daemon.settings = replace(daemon.settings, model=replace(daemon.settings.model, weights=weights))
            log.info("weights now %s (%s)", weights_folder(weights), engine.kind)
            daemon.emit({"type": "state"})

        self.cancel_swap()
        self._swap = asyncio.get_running_loop().create_task(swap(), name="weights")
        self._swap.add_done_callback(_swap_done)
        return self._swap

    def cancel_swap(self) -> None:
        if self._swap is not None and not self._swap.done():
            self._swap.cancel()


def _swap_done(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("weights not changed: %s", task.exception())
