"""The real daemon as a child process, a JACK peer playing keyboard and synth to it, and
systemd's end of sd_notify.

Used by the service tests (MQTT, signals) and bench/service_stop.py. The daemon gets tiny random-init weights (fast to
load), a generated TOML config and the test's JACK server (JACK_DEFAULT_SERVER is inherited).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import mido
import rtmidi
import torch
from fixtures_mqtt import Broker, MqttObserver

from daemon.codec import BAR, MAX_OFFSET, OFFSET_BASE, PITCH_BASE, PITCH_MIN
from daemon.midi_input import RTMIDI_QUEUE, InputPoller
from daemon.model import build_model, config_from_dict
from daemon.port_release import release
from daemon.weights import save_weights

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
ANSWER_WAIT_S = 20.0
ALL_SOUND_OFF, ALL_NOTES_OFF = 120, 123
TINY = {
    "lstm": {"kind": "lstm", "embed_dim": 8, "hidden_size": 32, "num_layers": 1, "fc1": 32, "fc2": 32, "dropout": 0.0},
    "transformer": {"kind": "transformer", "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64, "dropout": 0.0},
}


def save_tiny_weights(folder: Path, kind: str = "lstm", eager: bool = False) -> Path:
    """Random-init weights of a tiny model: the daemon's real loading path, loaded in milliseconds.

    An eager one begins notes often, mostly between E2 and D#4: a random model's next onset is
    anywhere in the rest of the bar, so what it plays along in a bar or two is down to chance
    (none at all, now and then), and a test of what it plays must not be."""
    torch.manual_seed(0)
    config = config_from_dict(TINY[kind])
    model = build_model(config)
    if eager:
        with torch.no_grad():
            bias = model.head.bias
            bias[BAR] -= 2.0
            bias[OFFSET_BASE:OFFSET_BASE + MAX_OFFSET + 1] -= 0.5 * torch.arange(MAX_OFFSET + 1)
            bias[PITCH_BASE + 40 - PITCH_MIN:PITCH_BASE + 64 - PITCH_MIN] += 2.0
    return save_weights(folder, model, config, {"purpose": "service tests"})


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def toml(sections: dict[str, dict]) -> str:
    """A TOML document of tables (a section may be dotted, "presets.warm") of strings, numbers,
    booleans and inline tables."""
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


class JackPeer:
    """A keyboard (the daemon's input) and a synth (its output), two JACK clients of their own
    (JACK renames a second client of the same name). Everything the daemon plays reaches the
    synth and is recorded as (arrival time, mido message).

    The synth is read by the daemon's own InputPoller, never through an rtmidi callback (see
    there why)."""

    def __init__(self) -> None:
        name = f"peer-{uuid.uuid4().hex[:6]}"
        self.keyboard_port = f"{name}-keys:out"
        self.synth_port = f"{name}-synth:in"
        self.received: list[tuple[float, mido.Message]] = []
        self._lock = threading.Lock()
        self.keyboard = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, f"{name}-keys")
        self.keyboard.open_virtual_port("out")
        self.synth: rtmidi.MidiIn | None = None
        self._poller = InputPoller(self._arrived)
        self.open_synth()

    def open_synth(self) -> None:
        self.synth = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, self.synth_port.split(":")[0], queue_size_limit=RTMIDI_QUEUE)
        self.synth.open_virtual_port("in")
        self._poller.attach(self.synth)

    def close_synth(self) -> None:
        """The synth goes away, as an unplugged device would."""
        if self.synth is not None:
            self._poller.attach(None)
            release(self.synth)
            self.synth = None

    def _arrived(self, data: bytes, arrived: float) -> None:
        with self._lock:
            self.received.append((arrived, mido.Message.from_bytes(data)))

    def messages(self, since: float = 0.0) -> list[mido.Message]:
        with self._lock:
            return [m for t, m in self.received if t >= since]

    def play_phrase(self, pitches: list[int], step_s: float = 0.12) -> None:
        """A short legato phrase; the daemon answers at the next bar line."""
        for pitch in pitches:
            self.keyboard.send_message(mido.Message("note_on", note=pitch, velocity=90).bytes())
            time.sleep(step_s)
            self.keyboard.send_message(mido.Message("note_off", note=pitch, velocity=0).bytes())

    def close(self) -> None:
        self.close_synth()
        self._poller.stop()
        release(self.keyboard)


def sounding(messages: list[mido.Message]) -> set[tuple[int, int]]:
    """(channel, pitch) still on after these messages, as a synth hears them: a note-off (or a
    note-on of velocity 0) ends one note-on; all notes off (CC 123) and all sound off (CC 120)
    end every note of their channel."""
    on: dict[tuple[int, int], int] = {}
    for m in messages:
        if m.type == "note_on" and m.velocity > 0:
            on[(m.channel, m.note)] = on.get((m.channel, m.note), 0) + 1
        elif m.type in ("note_off", "note_on"):
            key = (m.channel, m.note)
            if on.get(key):
                on[key] -= 1
        elif m.type == "control_change" and m.control in (ALL_NOTES_OFF, ALL_SOUND_OFF):
            on = {key: count for key, count in on.items() if key[0] != m.channel}
    return {key for key, count in on.items() if count}


class NotifySocket:
    """systemd's side of sd_notify: a bound datagram socket, read by a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._open = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while self._open:
            try:
                datagram = self._sock.recv(4096)
            except TimeoutError:
                continue
            with self._changed:
                self.lines.extend(datagram.decode().split("\n"))
                self._changed.notify_all()

    def wait_for(self, line: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while line not in self.lines:
                left = deadline - time.monotonic()
                assert left > 0, f"no {line!r} from the daemon; got {self.lines}"
                self._changed.wait(left)

    def close(self) -> None:
        self._open = False
        self._reader.join()
        self._sock.close()


class DaemonProcess:
    """`antiphon run --config <generated>` as a child process, its log in a file."""

    def __init__(self, folder: Path, sections: dict[str, dict], env: dict[str, str] | None = None,
                 flags: list[str] | None = None) -> None:
        self.folder = folder
        self.flags = flags or []
        self.config = folder / "config.toml"
        self.config.write_text(toml(sections))
        self.log = folder / "daemon.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        command = [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())",
                   "run", "--config", str(self.config), *self.flags]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def wait_for_log(self, text: str, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the daemon's log after {timeout} s:\n{self.log_text()}")
            time.sleep(0.05)

    def wait_ready(self) -> DaemonProcess:
        self.wait_for_log("ready:")
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
            self.process.wait(timeout=10)


# -- a running daemon steered over MQTT ----------------------------------------------
class Jam(NamedTuple):
    daemon: DaemonProcess
    peer: JackPeer
    observer: MqttObserver
    folder: Path


def daemon_sections(peer: JackPeer, weights: Path, broker: Broker, prefix: str) -> dict:
    return {
        "midi": {"api": "jack", "in": peer.keyboard_port, "out": peer.synth_port,
                 "client_name": f"antiphon-{uuid.uuid4().hex[:6]}"},
        # 240 bpm: a 4/4 bar lasts one second, so answers come quickly.
        "tempo": {"bpm": 240.0, "follow_clock": False},
        "jam": {"answer_bars": 2, "seed": 0},
        "model": {"weights": str(weights), "threads": 1},
        "mqtt": {"host": broker.host, "port": broker.port, "prefix": prefix},
    }


def start_jam(folder: Path, broker: Broker, mqtt_flags: bool = False) -> Jam:
    """The daemon, configured by TOML (or its broker by --mqtt-* flags), online and stated."""
    weights = save_tiny_weights(folder / "lstm")
    save_tiny_weights(folder / "transformer", "transformer")
    peer = JackPeer()
    prefix = f"antiphon/test-{uuid.uuid4().hex[:8]}"
    sections = daemon_sections(peer, weights, broker, prefix)
    flags = []
    if mqtt_flags:
        del sections["mqtt"]
        flags = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--mqtt-prefix", prefix]
    daemon = DaemonProcess(folder, sections, flags=flags).start().wait_ready()
    observer = MqttObserver(broker, prefix)
    wait_online(observer)
    observer.wait_state(lambda s: True, "the retained state")
    return Jam(daemon, peer, observer, folder)


def stop_jam(jam: Jam) -> None:
    jam.observer.close()
    jam.daemon.kill()
    jam.peer.close()


def wait_online(observer: MqttObserver, since: int = 0) -> None:
    observer.wait_for(lambda: (m := observer.latest("status", since)) and m.payload == b"online", "status online")


def events(observer: MqttObserver, kind: str, since: int = 0) -> list[dict]:
    return [e for e in (m.json() for m in observer.on("event", since)) if e["type"] == kind]


def answer_heard(jam: Jam) -> int:
    """The player plays; the daemon answers with notes on the synth. Returns the record's mark."""
    mark, played = jam.observer.mark(), time.monotonic()
    jam.peer.play_phrase([60, 64, 67, 72])
    jam.observer.wait_for(
        lambda: any(m.type == "note_on" for m in jam.peer.messages(played)), "an answer note on the synth",
        ANSWER_WAIT_S,
    )
    return mark


def answer_started(jam: Jam) -> None:
    """An answer is heard, and announced on <prefix>/event."""
    mark = answer_heard(jam)
    jam.observer.wait_for(lambda: events(jam.observer, "answer_started", mark), "answer_started", ANSWER_WAIT_S)


def answer_finished(jam: Jam, since: int) -> dict:
    return jam.observer.wait_for(lambda: events(jam.observer, "answer_finished", since), "answer_finished",
                                 ANSWER_WAIT_S)[-1]
