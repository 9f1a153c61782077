"""The running daemon: ports, engine, session and side channels wired together.

Lifecycle: load the weights (a worker thread), open the ports (or start degraded and keep
retrying), log one line when ready and tell systemd. SIGTERM/SIGINT release every sounding note
and exit 0; SIGHUP re-reads the config and applies what changed without dropping the MIDI
connections that did not change; a bad new config is rejected with its message and the old one
kept. The MQTT bridge and other observers use state(), apply_setting(), command() and
add_listener().
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

import torch

from daemon import sdnotify, startup_signals
from daemon.config import SECTIONS, ConfigError, Settings, load_settings, with_setting
from daemon.engine import Engine
from daemon.jam import ANSWERING, JamSession
from daemon.output import NoteOutput, silencing_messages
from daemon.paths import KINDS, shipped_weights
from daemon.ports import MidiPorts, MidiUnavailable
from daemon.weights import WeightsError, check_weights_folder

log = logging.getLogger("antiphon")

LIVE_SETTINGS = {"temperature": "jam", "top_p": "jam", "bpm": "tempo", "answer_bars": "jam"}
PORT_KEYS = ("api", "input", "output", "virtual", "client_name")
ENGINE_KEYS = ("weights", "device", "precision", "kernel")  # [model] settings a new engine is loaded for
# While inference runs in its worker thread, the loop must get the GIL back quickly.
SWITCH_INTERVAL_S = 0.0005
SILENCE_AGAIN_S = 0.2  # see _silence_output


class StartupError(Exception):
    """The daemon cannot start; the message says why (no traceback)."""


def weights_folder(weights: str) -> Path:
    """A shipped model by name (found beside the package, so an editable install works) or a folder."""
    if weights in KINDS:
        return shipped_weights(weights)
    try:
        return Path(weights).expanduser()
    except RuntimeError:  # "~nobody/...": no such user; the folder check names it
        return Path(weights)


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


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """'section.key old -> new' for every setting that differs (passwords not shown)."""
    changes = []
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for spec in fields(before):
            a, b = getattr(before, spec.name), getattr(after, spec.name)
            if a != b:
                shown = "(changed)" if spec.name == "password" else f"{a!r} -> {b!r}"
                changes.append(f"{section}.{spec.name} {shown}")
    return changes


class JamApp:
    """The daemon. `await run()` until SIGTERM or `stop()`."""

    def __init__(
        self,
        settings: Settings,
        config_path: str | None = None,
        overrides: dict | None = None,
        ports_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or {}
        self.ports_factory = ports_factory
        self.listeners: list[Callable[[dict], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.session: JamSession | None = None
        self.output: NoteOutput | None = None
        self.ports = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._mqtt: asyncio.Task | None = None
        self._swap: asyncio.Task | None = None
        self._status = ""
        self._reload_when_ready = False

    # -- interface for the MQTT bridge and other observers ------------------------------
    def state(self) -> dict:
        s = self.settings
        folder = weights_folder(s.model.weights)
        engine = self.session.engine if self.session else None
        return {
            "mode": self.mode,
            "weights": {"path": str(folder), "kind": engine.kind if engine else "",
                        "precision": engine.precision if engine else s.model.precision,
                        "kernel": engine.kernel if engine else s.model.kernel},
            "temperature": s.jam.temperature,
            "top_p": s.jam.top_p,
            "bpm": round(self.session.grid.bpm, 2) if self.session and self._clock_present() else s.tempo.bpm,
            "meter": s.tempo.meter,
            "answer_bars": s.jam.answer_bars,
            "ports": self.ports.status() if self.ports else {"in": {"name": "", "connected": False},
                                                             "out": {"name": "", "connected": False}},
            "paused": bool(self.session and self.session.paused),
            "input": {"malformed": self.ports.malformed if self.ports else 0,
                      "dropped": self.ports.dropped if self.ports else 0},
        }

    @property
    def mode(self) -> str:
        if self.ports is None or not self.ports.available:
            return "degraded"
        if self.session and self.session.paused:
            return "paused"
        if self.session and self.session.phase == ANSWERING:
            return "answering"
        return "listening"

    def apply_setting(self, name: str, value: Any) -> asyncio.Task | None:
        """Change one live setting; ValueError (changing nothing) on a bad name or value.

        A weights change is checked at once and loaded in a worker thread; the returned task
        finishes when the new model answers (or raises ValueError if it cannot be loaded)."""
        if name == "weights":
            if not isinstance(value, str) or not value:
                raise ValueError("weights must be 'transformer', 'lstm' or a weights folder")
            check_weights(value)
            return self._start_swap(value)
        if name not in LIVE_SETTINGS:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join([*LIVE_SETTINGS, 'weights'])}")
        self._use(with_setting(self.settings, LIVE_SETTINGS[name], name, value))
        return None

    def command(self, action: str) -> None:
        if self.session is None:
            raise ValueError("the daemon is still starting")
        if action == "pause":
            self.session.pause()
        elif action == "resume":
            self.session.resume()
        elif action == "panic":
            self.session.stop_answer()
            self.output.panic()
        else:
            raise ValueError(f"unknown action {action!r}; known: pause, resume, panic")
        self._emit({"type": "state"})

    def add_listener(self, callback: Callable[[dict], None]) -> None:
        self.listeners.append(callback)

    def remove_listener(self, callback: Callable[[dict], None]) -> None:
        self.listeners.remove(callback)

    # -- lifecycle --------------------------------------------------------------------
    async def run(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
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
        self.output = NoteOutput(loop, self._send, self.settings.jam.late_policy,
                                 self.settings.jam.output_latency_ms / 1000)
        self.session = JamSession(loop, self.settings, engine, self.output, self._emit)
        self.ports = self._make_ports(self.settings)
        try:
            self.ports.open(loop)
            self._silence_output()
        except MidiUnavailable as error:
            self.ports.reason = str(error)
            log.warning("starting degraded: %s; retrying with backoff", error)
        self._tasks = [
            loop.create_task(self.ports.watch(loop), name="ports"),
            loop.create_task(sdnotify.watchdog_task(), name="watchdog"),
        ]
        self._start_mqtt()
        await asyncio.wrap_future(self.session.worker.submit(lambda: None))  # engine primed
        # Everything alive now (torch, the model, the ports) lives as long as the daemon: out of
        # the collector's sight, a full collection no longer stalls the loop for tens of ms.
        gc.freeze()
        self._log_ready()
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
            self.session.stop_answer()
            self.session.close()
        if self.output is not None:
            self.output.panic()
        for task in [*self._tasks, *(t for t in (self._swap,) if t)]:
            task.cancel()
        await asyncio.gather(*self._tasks, *(self._stop_mqtt(self._mqtt),) if self._mqtt else (),
                             return_exceptions=True)
        if self.ports is not None:
            self.ports.close()
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
            if settings.model.weights != self.settings.model.weights:
                check_weights(settings.model.weights)
        except (ConfigError, ValueError) as error:
            log.error("config reload rejected, keeping the running settings: %s", error)
            return
        old = self.settings
        changes = changed_settings(old, settings)
        self._use(settings)
        if any(getattr(settings.model, k) != getattr(old.model, k) for k in ENGINE_KEYS):
            self._start_swap(settings.model.weights)
        if any(getattr(settings.midi, k) != getattr(old.midi, k) for k in PORT_KEYS):
            self._reopen_ports(settings)
        if settings.mqtt != old.mqtt:
            # Until the new bridge runs, the restart is the task to cancel on shutdown.
            self._mqtt = self.loop.create_task(self._restart_mqtt(self._mqtt), name="mqtt-restart")
        logging.getLogger().setLevel(settings.log.level.upper())
        log.info("config reloaded from %s: %s", settings.source, ", ".join(changes) or "nothing changed")

    # -- internals --------------------------------------------------------------------
    def _use(self, settings: Settings) -> None:
        # The weights in use change only once a swap has loaded them.
        self.settings = replace(settings, model=replace(settings.model, weights=self.settings.model.weights))
        if self.session is not None:
            self.session.update_settings(self.settings)
        self._emit({"type": "state"})

    def _start_swap(self, weights: str) -> asyncio.Task:
        async def swap() -> None:
            model = self.settings.model
            engine = await asyncio.to_thread(load_engine, weights, model.device, model.precision, model.kernel)
            await asyncio.wrap_future(self.session.swap_engine(engine))
            self.settings = replace(self.settings, model=replace(self.settings.model, weights=weights))
            log.info("weights now %s (%s)", weights_folder(weights), engine.kind)
            self._emit({"type": "state"})

        if self._swap is not None and not self._swap.done():
            self._swap.cancel()
        self._swap = asyncio.get_running_loop().create_task(swap(), name="weights")
        self._swap.add_done_callback(self._swap_done)
        return self._swap

    @staticmethod
    def _swap_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("weights not changed: %s", task.exception())

    def _make_ports(self, settings: Settings):
        if self.ports_factory is not None:
            return self.ports_factory(self.session.receive, self._port_event)
        m = settings.midi
        return MidiPorts(m.api, m.client_name, m.input, m.output, self.session.receive, self._port_event)

    def _reopen_ports(self, settings: Settings) -> None:
        for task in self._tasks:
            if task.get_name() == "ports":
                task.cancel()
        self.output.panic()
        self.ports.close()
        self.ports = self._make_ports(settings)
        try:
            self.ports.open(self.loop)
            self._silence_output()
        except MidiUnavailable as error:
            self.ports.reason = str(error)
            log.warning("MIDI unavailable after reload: %s; retrying with backoff", error)
        self._tasks = [t for t in self._tasks if t.get_name() != "ports"]
        self._tasks.append(self.loop.create_task(self.ports.watch(self.loop), name="ports"))
        self._emit({"type": "state"})

    async def _restart_mqtt(self, previous: asyncio.Task | None) -> None:
        # The old connection says "offline" before the new one says "online" (same broker and
        # prefix: the other order would leave "offline" retained).
        if previous is not None:
            await self._stop_mqtt(previous)
        self._start_mqtt()

    @staticmethod
    async def _stop_mqtt(task: asyncio.Task) -> None:
        from daemon.mqtt import stop_bridge

        await stop_bridge(task)

    def _start_mqtt(self) -> None:
        if not self.settings.mqtt.host:
            return
        from daemon.mqtt import MqttBridge

        self._mqtt = self.loop.create_task(MqttBridge(self, self.settings.mqtt).run(), name="mqtt")

    def _send(self, message) -> None:
        if self.ports is not None:
            self.ports.send(message)

    def _silence_output(self, again: bool = True) -> None:
        """An output port (re)opened or (re)connected: what an earlier run or connection left
        sounding (a crash, a lost port: notes whose note-off never came) ends before anything
        else is sent. Sent directly, not through NoteOutput, whose count knows nothing of them.

        JACK may add a new connection to its graph a cycle after the client first writes to it,
        and lose that write (1 in 30 fresh connections, measured on the dummy driver): the
        silence is sent once more a little later, unless a note has gone out meanwhile."""
        channels = {self.settings.midi.output_channel - 1, *self.output.channels_used}
        for message in silencing_messages(channels):
            self._send(message)
        if again:
            self.loop.call_later(SILENCE_AGAIN_S, self._silence_again, self.output.stats.notes)

    def _silence_again(self, notes_before: int) -> None:
        if self.output.stats.notes == notes_before and not self.output.busy:
            self._silence_output(again=False)

    def _port_event(self, event: dict) -> None:
        if event["type"] in ("port_lost", "midi_lost") and self.session is not None:
            self.session.stop_answer()
            self.output.panic()
        if event["type"] == "midi_available" or (event["type"] in ("port_regained", "connection_restored")
                                                 and event["port"] == "output"):
            self._silence_output()
        self._emit(event)
        self._emit({"type": "state"})

    def _emit(self, event: dict) -> None:
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

    def _clock_present(self) -> bool:
        return self.session.clock.present(self.loop.time())

    def _log_ready(self) -> None:
        status = self.ports.status()
        where = (f"in={status['in']['name']} out={status['out']['name']}" if self.ports.available
                 else f"degraded: {self.ports.reason}")
        s = self.settings
        log.info(
            "ready: %s, weights %s (%s, %s, %s, %s kernel), %g bpm %s, answers %s bars",
            where, weights_folder(s.model.weights), self.session.engine.kind, self.session.engine.device,
            self.session.engine.precision, self.session.engine.kernel,
            s.tempo.bpm, s.tempo.meter, s.jam.answer_bars or f"as the call (max {s.jam.max_answer_bars})",
        )
