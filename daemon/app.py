"""The running daemon: ports, engine, session and side channels wired together.

Lifecycle: load the weights (a worker thread), open the ports (or start degraded and keep
retrying), log one line when ready and tell systemd. SIGTERM/SIGINT release every sounding note
and exit 0; SIGHUP re-reads the config and applies what changed without dropping the MIDI
connections that did not change; a bad new config is rejected with its message and the old one
kept. The MQTT bridge and other observers use state(), apply_setting(), command() and
add_listener(); the requests are handled by daemon/control_surface.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import mido
import torch

from daemon import sdnotify, startup_signals
from daemon.clock import check_loop_clock, now
from daemon.config import (
    LIVE_SETTINGS,
    SECTIONS,
    ConfigError,
    Settings,
    load_settings,
    mqtt_password,
)
from daemon.control_surface import ControlSurface, check_weights, load_engine, weights_cycle
from daemon.controls import Controls
from daemon.discovery import DISCOVERY_CHANGED
from daemon.engine import Engine
from daemon.jam import JamSession, Phase
from daemon.midi_link import MidiLink
from daemon.mqtt_link import MqttLink
from daemon.paths import default_takes_folder, state_folder, weights_folder
from daemon.port_contract import Ports, PortsFactory
from daemon.takes import TakeRecorder

log = logging.getLogger("antiphon")

PORT_KEYS = ("api", "input", "output", "virtual", "client_name")
ENGINE_KEYS = ("weights", "device", "precision", "kernel")  # [model] settings a new engine is loaded for
CONTROL_MESSAGES = ("control_change", "program_change")
NOTE_MESSAGES = ("note_on", "note_off")
# While inference runs in its worker thread, the loop must get the GIL back quickly.
SWITCH_INTERVAL_S = 0.0005
STATE_NAMES = {"mode": "jam_mode"}  # a live setting shown under another name: "mode" is the daemon's state


def kept_state_folder() -> Path | None:
    """The state folder, or None (logged) where there is none: learned controls then last until exit."""
    try:
        return state_folder()
    except OSError as error:
        log.warning("no state folder: %s", error)
        return None


def open_takes(settings: Settings) -> TakeRecorder | None:
    """The take recorder for [takes], or None when off or when its folder cannot be made (logged)."""
    takes = settings.takes
    if not takes.dir:
        return None
    folder = default_takes_folder() if takes.dir == "auto" else Path(takes.dir).expanduser()
    try:
        return TakeRecorder(folder, takes.max_files, int(takes.max_mb * 1e6), settings.jam.echo_window_ms / 1000)
    except OSError as error:
        log.warning("takes are not kept: cannot use %s (%s)", folder, error.strerror or error)
        return None


class StartupError(Exception):
    """The daemon cannot start; the message says why (no traceback)."""


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """'section.key old -> new' for every setting that differs (passwords not shown)."""
    changes = []
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for spec in fields(before):
            a, b = getattr(before, spec.name), getattr(after, spec.name)
            if a != b:
                shown = "(changed)" if spec.name in ("password", "password_file") else f"{a!r} -> {b!r}"
                changes.append(f"{section}.{spec.name} {shown}")
    return changes


def log_ready(s: Settings, where: str, engine: Engine) -> None:
    log.info(
        "ready: %s, weights %s (%s, %s, %s, %s kernel), %g bpm %s, answers %s bars",
        where, weights_folder(s.model.weights), engine.kind, engine.device, engine.precision, engine.kernel,
        s.tempo.bpm, s.tempo.meter, s.jam.answer_bars or f"as the call (max {s.jam.max_answer_bars})",
    )


class JamApp:
    """The daemon. `await run()` until SIGTERM or `stop()`."""

    def __init__(
        self,
        settings: Settings,
        config_path: str | None = None,
        overrides: dict | None = None,
        ports_factory: PortsFactory | None = None,
        preset: str = "",
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or {}
        self.listeners: list[Callable[[dict], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: JamSession | None = None
        self.midi = MidiLink(self._port_event, ports_factory)
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.mqtt = MqttLink(self, lambda: self.settings.mqtt)
        self._status = ""
        self.controls: Controls | None = None
        self.takes: TakeRecorder | None = None
        self.last_latency_ms: float | None = None  # the last answer's response latency
        self._reload_when_ready = False  # a SIGHUP came while starting
        self.surface = ControlSurface(self, preset)

    @property
    def ports(self) -> Ports | None:
        return self.midi.ports

    # -- interface for the MQTT bridge and other observers ------------------------------
    def state(self) -> dict:
        s = self.settings
        folder = weights_folder(s.model.weights)
        engine = self.session.answerer.engine if self.session else None
        return {
            # every live setting as set; weights and bpm as in use, below
            **{STATE_NAMES.get(name, name): getattr(getattr(s, live.section), name) for name, live in LIVE_SETTINGS.items()},
            "mode": self.mode,
            "weights": {"name": s.model.weights, "path": str(folder), "kind": engine.kind if engine else "",
                        "precision": engine.precision if engine else s.model.precision,
                        "kernel": engine.kernel if engine else s.model.kernel},
            "bpm": self._tempo(),
            "tempo_source": self.session.timeline.source if self.session else "fixed",
            "meter": s.tempo.meter,
            "ports": self.midi.status(),
            "paused": bool(self.session and self.session.paused),
            "preset": self.surface.preset,
            "last_latency_ms": self.last_latency_ms,
            "controls": self.controls.map() if self.controls else {},
            "input": {"malformed": self.ports.malformed if self.ports else 0,
                      "dropped": self.ports.dropped if self.ports else 0},
        }

    @property
    def mode(self) -> str:
        if not self.midi.available:
            return "degraded"
        if self.session and self.session.paused:
            return "paused"
        if self.session and self.session.phase == Phase.ANSWERING:
            return "answering"
        if self.session and self.session.phase == Phase.ACCOMPANYING:
            return "accompanying"
        return "listening"

    # The requests themselves are the surface's (daemon/control_surface.py).
    def apply_setting(self, name: str, value: Any) -> asyncio.Task | None:
        return self.surface.apply_setting(name, value)

    def command(self, action: str) -> None:
        self.surface.command(action)

    def learn(self, name: str) -> None:
        self.surface.learn(name)

    def select_preset(self, name: str) -> asyncio.Task | None:
        return self.surface.select_preset(name)

    def discovery_options(self) -> tuple[list[str], list[str]]:
        return self.surface.discovery_options()

    def add_listener(self, callback: Callable[[dict], None]) -> None:
        self.listeners.append(callback)

    def remove_listener(self, callback: Callable[[dict], None]) -> None:
        self.listeners.remove(callback)

    # -- lifecycle --------------------------------------------------------------------
    async def run(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
        check_loop_clock(loop)
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self.reload}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        for sig in startup_signals.taken():  # those that came while the process started
            handlers[sig]()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        torch.set_num_threads(self.settings.model.threads)
        sdnotify.notify(f"STATUS=loading weights {self.settings.model.weights}")
        try:
            model = self.settings.model
            engine = await asyncio.to_thread(load_engine, model.weights, model.device, model.precision, model.kernel)
        except ValueError as error:
            self._remove_signal_handlers()
            raise StartupError(f"cannot load weights: {error}") from None
        if self._stop.is_set():  # SIGTERM while loading
            self._remove_signal_handlers()
            return 0
        self.takes = open_takes(self.settings)
        self.session = JamSession(loop, self.settings, engine, self._send, self.emit)
        self.controls = Controls(self.surface, self.emit, self.settings.controls, kept_state_folder())
        self.midi.start(loop, self.settings.midi, self._receive)
        if self.midi.available:
            self.session.playback.silence_output()
        self._tasks = [loop.create_task(sdnotify.watchdog_task(), name="watchdog")]
        self.mqtt.start()
        await asyncio.wrap_future(self.session.answerer.idle())  # engine primed
        # Everything alive now (torch, the model, the ports) lives as long as the daemon: out of
        # the collector's sight, a full collection no longer stalls the loop for tens of ms.
        gc.freeze()
        log_ready(self.settings, self.midi.where(), self.session.answerer.engine)
        self.ready.set()
        sdnotify.notify("READY=1", f"STATUS={self.mode}")
        if self._reload_when_ready:
            self.reload()
        try:
            await self._stop.wait()
        finally:
            await self._shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        sdnotify.notify("STOPPING=1", "STATUS=stopping")
        if self.session is not None:
            self.session.close()
        if self.takes is not None:
            self.takes.close(self._tempo(), self.settings.tempo.meter)
        self.surface.cancel_swap()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, self.midi.stop_watching(), self.mqtt.stop(), return_exceptions=True)
        self.midi.close()
        self._remove_signal_handlers()
        log.info("stopped; nothing left sounding")

    def _remove_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)

    def reload(self) -> None:
        """SIGHUP: the config file again (with the same flags on top)."""
        if self.session is None:
            log.info("SIGHUP while starting up: the config is read again once started")
            self._reload_when_ready = True
            return
        try:
            settings = load_settings(self.config_path, self.overrides)
            mqtt_password(settings.mqtt)
            if settings.model.weights != self.settings.model.weights:
                check_weights(settings.model.weights)
        except (ConfigError, ValueError) as error:
            log.error("config reload rejected, keeping the running settings: %s", error)
            return
        old = self.settings
        changes = changed_settings(old, settings)
        self.use_settings(settings)
        self.controls.configure(settings.controls)
        if settings.takes != old.takes:
            if self.takes is not None:
                self.takes.close(self._tempo(), old.tempo.meter)
            self.takes = open_takes(settings)
        if any(getattr(settings.model, k) != getattr(old.model, k) for k in ENGINE_KEYS):
            self.surface.start_swap(settings.model.weights)
        if any(getattr(settings.midi, k) != getattr(old.midi, k) for k in PORT_KEYS):
            self._reopen_ports(settings)
        if settings.presets != old.presets or settings.model.weights != old.model.weights:
            self.surface.weights_cycle = weights_cycle(settings.model.weights)
            self.emit({"type": DISCOVERY_CHANGED})  # Home Assistant's selects offer the new options
        if settings.mqtt != old.mqtt:
            self.mqtt.restart(old.mqtt, settings.mqtt)
        logging.getLogger().setLevel(settings.log.level.upper())
        log.info("config reloaded from %s: %s", settings.source, ", ".join(changes) or "nothing changed")

    # -- internals --------------------------------------------------------------------
    def _receive(self, message: mido.Message, arrived: float) -> None:
        channel = self.settings.midi.input_channel
        listened = not channel or getattr(message, "channel", None) == channel - 1
        if listened and message.type in NOTE_MESSAGES and self.takes is not None:
            self.takes.player(message, arrived - self.settings.jam.input_latency_ms / 1000)
        elif listened and message.type in CONTROL_MESSAGES:
            self.controls.receive(message)
        self.session.receive(message, arrived)

    def _send(self, message: mido.Message) -> None:
        self.midi.send(message)
        if self.takes is not None and message.type in NOTE_MESSAGES:
            self.takes.model(message, now(), kept=message.channel != self.settings.tempo.click_channel - 1)

    def _tempo(self) -> float:
        """The tempo in use: an external clock's, the one read from the player or tapped, else the setting."""
        if self.session is not None:
            return round(self.session.timeline.grid.bpm, 2)
        return self.settings.tempo.bpm

    def use_settings(self, settings: Settings) -> None:
        # The weights in use change only once a swap has loaded them.
        self.settings = replace(settings, model=replace(settings.model, weights=self.settings.model.weights))
        if self.session is not None:
            self.session.update_settings(self.settings)
        self.emit({"type": "state"})

    def _reopen_ports(self, settings: Settings) -> None:
        self.session.panic()
        self.midi.restart(self.loop, settings.midi)
        if self.midi.available:
            self.session.playback.silence_output()
        self.emit({"type": "state"})

    def _port_event(self, event: dict) -> None:
        if event["type"] in ("port_lost", "midi_lost") and self.session is not None:
            self.session.panic()
        if event["type"] == "midi_available" or (event["type"] in ("port_regained", "connection_restored")
                                                 and event["port"] == "output"):
            self.session.playback.silence_output()
        self.emit(event)
        self.emit({"type": "state"})

    def emit(self, event: dict) -> None:
        if event["type"] == "answer_finished":
            self.last_latency_ms = event.get("latency_ms")
            take = self.takes.flush(self._tempo(), self.settings.tempo.meter) if self.takes is not None else None
            if take is not None:
                event["take"] = str(take)
        if event["type"] == "state":
            status = f"STATUS={self.mode}"
            if status != self._status:
                self._status = status
                sdnotify.notify(status)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # an observer's bug must not stop the music
                log.exception("event listener failed")
