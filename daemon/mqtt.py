"""MQTT bridge: steer and watch the jam daemon from a phone, a hub or a script.

Topics under the configured prefix:
  <prefix>/status        retained "online" / "offline" (Last Will), Home Assistant's payloads
  <prefix>/state         retained JSON state document, republished on change and on reconnect
  <prefix>/set/<setting> the live settings (config.py: temperature, top_p, bpm, tempo_mode, click,
                         answer_bars, weights), plain or JSON payload
  <prefix>/cmd/<action>  pause, resume, panic, next-weights, count-in (payload ignored)
  <prefix>/set/preset    a [presets.NAME] of the config
  <prefix>/cmd/learn     MIDI learn: the payload names the setting or action the next controller moves
  <prefix>/set/paused    ON/OFF: pause or resume (Home Assistant's switch)
  <discovery prefix>/... retained Home Assistant discovery documents (daemon/discovery.py)
  <prefix>/event         JSON events (answer started/finished, port lost/regained)
  <prefix>/error         JSON {"topic", "payload", "reason"} for every rejected command

Every command gets an answer: it takes effect (a new state document) or is answered on
<prefix>/error, whatever its payload; no payload ends the connection. A retained set/ is the
setting the broker holds for us: applied when first received, not again when the same message is
replayed on a reconnect. A retained cmd/ is not run (an action is not a state; it would repeat on
every connection): it is answered on <prefix>/error once.

The broker going away never touches the music: the bridge only talks to the app through
its public calls, and reconnects with backoff on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiomqtt

from daemon import discovery
from daemon.config import CONTROL_ACTIONS, LIVE_SETTINGS, finite_number, mqtt_password
from daemon.discovery import DEFAULT_PREFIX as DEFAULT_DISCOVERY
from daemon.discovery import DISCOVERY_CHANGED
from daemon.paths import installed_version

__all__ = ["MqttBridge", "stop_bridge", "CommandError", "parse_setting", "SETTINGS", "ACTIONS", "MAX_PAYLOAD_BYTES"]

log = logging.getLogger("antiphon.mqtt")

ONLINE = "online"
OFFLINE = "offline"
# Paths to weights folders are the longest legitimate payloads; PATH_MAX is 4096.
MAX_PAYLOAD_BYTES = 4096
# Bytes of a rejected payload echoed back on <prefix>/error.
ERROR_ECHO_CHARS = 200
# Reconnect backoff: first wait, cap, and the wait for the retained "offline" on exit.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
OFFLINE_PUBLISH_TIMEOUT_S = 1.0
STOP_PATIENCE_S = OFFLINE_PUBLISH_TIMEOUT_S + 0.5
EVENT_QUEUE_SIZE = 1024
RETAINED_REMEMBERED = 1024  # topics whose retained message was handled (one per topic is kept)

# The live settings and their type on the wire (declared in config.py); the app checks ranges
# and the weights folder.
SETTINGS: dict[str, type] = {name: setting.type for name, setting in LIVE_SETTINGS.items()}
# Other spellings of the settings (config.py's mqtt=...), accepted next to the state document's keys.
SETTING_ALIASES = {alias: name for name, setting in LIVE_SETTINGS.items() for alias in setting.aliases}
ACTIONS = CONTROL_ACTIONS
# Topics that take a name as payload rather than a setting's value or nothing.
PRESET_SETTING = "preset"  # <prefix>/set/preset: a [presets.NAME] of the config
LEARN_ACTION = "learn"  # <prefix>/cmd/learn: MIDI learn for the setting or action named
PAUSED_SETTING = "paused"  # <prefix>/set/paused: ON/OFF (Home Assistant's switch), true/false, 1/0
SWITCH_PAYLOADS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


async def stop_bridge(task: asyncio.Task) -> None:
    """Cancel a running bridge (its run() task) and wait until it has said "offline" and ended.

    Python 3.11's asyncio.wait_for, which aiomqtt awaits every operation with, swallows a
    cancellation that lands just as the operation completes (gh-86296): the bridge would run on.
    So the request is repeated, each time after the goodbye has had time to finish."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_PATIENCE_S)


def _honour_swallowed_cancel() -> None:
    """Raise the CancelledError that asyncio.wait_for may have swallowed (see stop_bridge)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class JamAppLike(Protocol):
    def state(self) -> dict: ...
    def apply_setting(self, name: str, value: Any) -> Any: ...
    def command(self, action: str) -> Any: ...
    def select_preset(self, name: str) -> Any: ...
    def learn(self, name: str) -> Any: ...
    def discovery_options(self) -> tuple[list[str], list[str]]: ...
    def add_listener(self, callback: Callable[[dict], None]) -> Any: ...
    def remove_listener(self, callback: Callable[[dict], None]) -> Any: ...


class CommandError(ValueError):
    """A command rejected before it reached the app; the message is the reason."""


def _number(value: Any, integer: bool) -> float | int:
    """A JSON value or a plain payload's text as a finite number (a whole one if `integer`),
    checked by the config's own check (config.finite_number); ranges are the app's business."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise CommandError(f"expected a number, got {value.strip()[:40]!r}") from None
    try:
        return finite_number(value, integer)
    except ValueError as error:
        reason = str(error)
        if reason == "out of range":
            raise CommandError(reason) from None
        got = f"JSON {type(value).__name__}" if reason == "not a number" else f"{value}"
        raise CommandError(f"expected {reason.removeprefix('not ')}, got {got}") from None


def parse_setting(name: str, text: str) -> Any:
    """Turn a payload into the value for setting `name`: a plain number/string or JSON.

    Raises CommandError naming what is wrong; ranges are the app's business.
    """
    kind = SETTINGS[name]
    text = text.strip()
    if not text:
        raise CommandError("empty payload")
    if kind is str:
        # A folder name is taken as it is, unless it is a JSON string.
        if not text.startswith('"'):
            return text
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"invalid JSON string: {exc.msg}") from None
        if not isinstance(value, str) or not value.strip():
            raise CommandError("expected a non-empty folder name")
        return value
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # a plain payload; _number says what is wrong with it
    except RecursionError:
        raise CommandError("JSON nested too deeply") from None
    return _number(value, integer=kind is int)


def _echo(payload: bytes) -> str:
    text = payload[:ERROR_ECHO_CHARS * 4].decode("utf-8", errors="backslashreplace")
    if len(text) > ERROR_ECHO_CHARS:
        return text[:ERROR_ECHO_CHARS] + f"... ({len(payload)} bytes)"
    return text


class MqttBridge:
    """Connects the app to a broker; run() until cancelled, reconnecting on its own."""

    def __init__(self, app: JamAppLike, settings: Any, retired_discovery: str = DEFAULT_DISCOVERY) -> None:
        """retired_discovery: a discovery prefix whose documents this bridge removes (the one in use
        before a reload; the default one when discovery is off)."""
        self.app = app
        self.settings = settings
        self.retired_discovery = retired_discovery
        self.prefix = settings.prefix
        self.status_topic = f"{self.prefix}/status"
        self.state_topic = f"{self.prefix}/state"
        self.event_topic = f"{self.prefix}/event"
        self.error_topic = f"{self.prefix}/error"
        self.connected = asyncio.Event()
        self._events: asyncio.Queue[dict] = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._state_pending = False
        self._slow_commands: set[asyncio.Task] = set()
        self._retained: dict[str, bytes] = {}  # topic -> digest of the retained payload handled

    # -- app side ---------------------------------------------------------------------
    def _on_app_event(self, event: dict) -> None:
        # Events while the broker is away are dropped; the state is republished on reconnect.
        if not self.connected.is_set():
            return
        if event.get("type") == "state":
            # A burst of changes needs only one document, read when it is sent.
            if self._state_pending:
                return
            self._state_pending = True
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("MQTT: outgoing event queue full, dropping %s", event.get("type"))

    # -- connection -------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        s = self.settings
        tls = None
        if s.tls_ca or s.tls_cert or s.tls_key:
            tls = aiomqtt.TLSParameters(ca_certs=s.tls_ca, certfile=s.tls_cert, keyfile=s.tls_key)
        return aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or None,
            username=s.username or None,
            password=mqtt_password(s) or None,
            tls_params=tls,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True),
            keepalive=30,
            timeout=5,
        )

    async def run(self) -> None:
        """Stay connected until cancelled; on cancel publish the retained "offline"."""
        client = self._client()
        where = f"{self.settings.host}:{self.settings.port}"
        self.app.add_listener(self._on_app_event)
        try:
            await self._stay_connected(client, where)
        finally:
            self.app.remove_listener(self._on_app_event)

    async def _stay_connected(self, client: aiomqtt.Client, where: str) -> None:
        backoff = BACKOFF_FIRST_S
        lost_since: float | None = None  # one warning per outage, not one per attempt
        while True:
            try:
                async with client:
                    if lost_since is None:
                        log.info("MQTT: connected to %s, prefix %s", where, self.prefix)
                    else:
                        log.info("MQTT: connected to %s again after %.1f s", where, time.monotonic() - lost_since)
                    lost_since, backoff = None, BACKOFF_FIRST_S
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                if lost_since is None:
                    log.warning("MQTT: broker %s unreachable (%s); retrying with backoff", where, exc)
                else:
                    log.debug("MQTT: broker %s still unreachable (%s); next try in %.1f s", where, exc, backoff)
            except Exception:
                # MQTT is a side channel: a bug here must not end the jam, only this connection.
                log.exception("MQTT: bridge failed; reconnecting in %.1f s", backoff)
            if lost_since is None:
                lost_since = time.monotonic()
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _session(self, client: aiomqtt.Client) -> None:
        while not self._events.empty():
            self._events.get_nowait()
        self._state_pending = False
        self.connected.set()
        try:
            _honour_swallowed_cancel()  # the connect's own wait_for may have eaten a stop
            await self._serve(client)
        except asyncio.CancelledError:
            # A clean disconnect does not fire the Will: say "offline" ourselves.
            self.connected.clear()
            try:
                await client.publish(self.status_topic, OFFLINE, qos=1, retain=True,
                                     timeout=OFFLINE_PUBLISH_TIMEOUT_S)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT: could not publish offline: %s", exc)
            raise
        finally:
            self.connected.clear()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Announce and send events, and take commands, until either loses the broker (its error
        is raised). The receiver notices a lost broker at once; a publish would wait for its
        acknowledgement until the operation timeout.

        Not a TaskGroup: Python 3.11's leaves this task's cancel count raised after a child fails,
        which _honour_swallowed_cancel would then take for a stop."""
        loops = [asyncio.create_task(self._publish(client)), asyncio.create_task(self._receive(client))]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        for task in done:
            task.result()

    # -- outgoing ---------------------------------------------------------------------
    async def _publish_state(self, client: aiomqtt.Client) -> None:
        document = json.dumps(self.app.state(), separators=(",", ":"))
        await client.publish(self.state_topic, document, qos=1, retain=True)

    async def _publish(self, client: aiomqtt.Client) -> None:
        """Subscribe, say "online" and the state, then send every event as it comes."""
        await client.subscribe(f"{self.prefix}/set/#", qos=1)
        await client.subscribe(f"{self.prefix}/cmd/#", qos=1)
        await client.publish(self.status_topic, ONLINE, qos=1, retain=True)
        await self._publish_state(client)
        await self._publish_discovery(client)
        _honour_swallowed_cancel()
        while True:
            event = await self._events.get()
            if event.get("type") == "state":
                self._state_pending = False
                await self._publish_state(client)
            elif event.get("type") == DISCOVERY_CHANGED:
                await self._publish_discovery(client)
            else:
                await client.publish(self.event_topic, json.dumps(event, separators=(",", ":")), qos=1)
            _honour_swallowed_cancel()

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        """Home Assistant's retained config documents, or their removal where discovery is off."""
        weights, presets = self.app.discovery_options()
        current = self.settings.discovery_prefix
        if self.retired_discovery and self.retired_discovery != current:
            for topic in discovery.removals(self.retired_discovery, self.prefix, weights, presets):
                await client.publish(topic, b"", qos=1, retain=True)
        if current:
            for topic, document in discovery.documents(current, self.prefix, weights, presets, installed_version()):
                await client.publish(topic, document, qos=1, retain=True)

    async def _publish_error(self, client: aiomqtt.Client, topic: str, payload: bytes, reason: str) -> None:
        log.info("MQTT: rejected %s: %s", topic, reason)
        document = {"topic": topic, "payload": _echo(payload), "reason": reason}
        await client.publish(self.error_topic, json.dumps(document), qos=0)

    # -- incoming ---------------------------------------------------------------------
    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
            if message.retain:
                digest = hashlib.sha256(payload).digest()
                if self._retained.get(topic) == digest:
                    continue  # replayed on a reconnect: handled once already
                if len(self._retained) >= RETAINED_REMEMBERED and topic not in self._retained:
                    del self._retained[next(iter(self._retained))]
                self._retained[topic] = digest
            try:
                if message.retain and self._kind(topic) == "cmd":
                    raise CommandError("a retained action is not run: publish cmd/ without retain, and clear this one")
                outcome = self._dispatch(topic, payload)
            except ValueError as exc:  # CommandError or the app's own ValueError
                await self._publish_error(client, topic, payload, str(exc))
                _honour_swallowed_cancel()
                continue
            except Exception as exc:  # a bug: answered and logged; the connection stays
                log.exception("MQTT: %s failed", topic)
                await self._publish_error(client, topic, payload, f"internal error ({type(exc).__name__})")
                _honour_swallowed_cancel()
                continue
            if inspect.isawaitable(outcome):
                # A weights swap can take seconds: panic must not wait behind it.
                task = asyncio.ensure_future(self._finish_slow(client, topic, bytes(payload), outcome))
                self._slow_commands.add(task)
                task.add_done_callback(self._slow_commands.discard)

    def _dispatch(self, topic: str, payload: bytes) -> Any:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise CommandError(f"payload too large: {len(payload)} bytes (limit {MAX_PAYLOAD_BYTES})")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError(f"payload is not valid UTF-8 (byte {exc.start})") from None
        kind, _, name = topic[len(self.prefix) + 1:].partition("/")
        if (kind, name) in (("set", PRESET_SETTING), ("cmd", LEARN_ACTION)):
            return self._dispatch_named(name, text)
        if (kind, name) == ("set", PAUSED_SETTING):
            paused = SWITCH_PAYLOADS.get(text.strip().strip('"').lower())
            if paused is None:
                raise CommandError(f"expected ON or OFF (or true/false, 1/0), got {text.strip()[:40]!r}")
            return self.app.command("pause" if paused else "resume")
        if kind == "set":
            setting = SETTING_ALIASES.get(name, name)
            if setting not in SETTINGS:
                raise CommandError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
            return self.app.apply_setting(setting, parse_setting(setting, text))
        if kind == "cmd":
            if name not in ACTIONS:
                raise CommandError(f"unknown action {name!r}; known: {', '.join(ACTIONS)}")
            return self.app.command(name)
        raise CommandError(f"unknown topic {topic!r}")

    def _dispatch_named(self, name: str, text: str) -> Any:
        """set/preset and cmd/learn: the payload names a preset, or the setting or action to learn."""
        chosen = text.strip()
        if chosen.startswith('"'):
            try:
                chosen = json.loads(chosen)
            except json.JSONDecodeError as exc:
                raise CommandError(f"invalid JSON string: {exc.msg}") from None
        if not isinstance(chosen, str) or not chosen:
            raise CommandError(f"expected a {'preset' if name == PRESET_SETTING else 'setting or action'} name")
        return self.app.select_preset(chosen) if name == PRESET_SETTING else self.app.learn(chosen)

    def _kind(self, topic: str) -> str:
        return topic[len(self.prefix) + 1:].partition("/")[0]

    async def _finish_slow(self, client: aiomqtt.Client, topic: str, payload: bytes, outcome: Any) -> None:
        try:
            await outcome
        except Exception as exc:  # ValueError: refused; anything else: a bug, answered all the same
            reason = str(exc) if isinstance(exc, ValueError) else f"internal error ({type(exc).__name__})"
            if not isinstance(exc, ValueError):
                log.error("MQTT: %s failed: %r", topic, exc)
            try:
                await self._publish_error(client, topic, payload, reason)
            except aiomqtt.MqttError:
                log.warning("MQTT: rejected %s (%s) while the broker was away", topic, reason)
