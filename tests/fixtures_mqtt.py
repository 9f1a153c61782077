"""pytest plugin: a real Mosquitto broker on a free loopback port, and a client watching it.

`mosquitto` (function scope) starts a broker with a generated config and kills it at
teardown; `broker.kill()` and `broker.start()` let a test take it away and bring it back
on the same port. `mosquitto_module` is one shared by a module; `mosquitto_tls` speaks TLS
only, with a generated CA and client certificates. Skips with a clear reason where the
mosquitto (or openssl) binary is missing.
`MqttObserver` records everything under a prefix (paho's threaded client: the tests are
synchronous) and resubscribes after the broker comes back.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

START_TIMEOUT_S = 10.0


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TlsFiles(NamedTuple):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Generated with the openssl command line (skips the test where it is missing)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=antiphon test CA",
        "-keyout", "ca.key", "-out", "ca.crt")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=antiphon")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")
    return TlsFiles(*(folder / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")))


class Broker:
    """One mosquitto process bound to 127.0.0.1:port; restartable on the same port.
    With `tls`, the listener speaks TLS only and wants a client certificate from the CA."""

    host = "127.0.0.1"

    def __init__(self, binary: str, folder: Path, tls: TlsFiles | None = None) -> None:
        self.binary = binary
        self.folder = folder
        self.tls = tls
        self.port = free_loopback_port()
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        tls_lines = "" if tls is None else (
            f"cafile {tls.ca}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\nrequire_certificate true\n"
        )
        self.config.write_text(
            f"listener {self.port} {self.host}\n"
            + tls_lines +
            # Started as root, mosquitto would switch to its own user, which cannot read the
            # test's private temporary folders.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # The malformed-payload burst answers 1,000 errors to one subscriber at once.
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.process is None, "broker already running"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {START_TIMEOUT_S} s")

    def kill(self) -> None:
        """Take the broker away abruptly (SIGKILL), as a crash or a pulled cable would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None


class Received(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    arrived: float  # time.monotonic() when the observer got it

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttObserver:
    """Subscribes to `<prefix>/#`, records every message, publishes for the test."""

    def __init__(self, broker: Broker, prefix: str, username: str | None = None, password: str | None = None) -> None:
        self.prefix = prefix
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.tls is not None:
            self.client.tls_set(ca_certs=str(broker.tls.ca), certfile=str(broker.tls.client_cert),
                                keyfile=str(broker.tls.client_key))
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        self.wait_for(lambda: self.client.is_connected(), "the observer to connect")

    def _connected(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(f"{self.prefix}/#", qos=1)

    def _message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain),
                                          time.monotonic()))
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        """Wait until condition() is truthy (re-checked on every message); returns its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (value := condition()):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(f"{m.topic} {m.payload[:200]!r}" for m in self.messages[-10:])
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last messages:\n{tail}")
                self._changed.wait(min(left, 0.1))
        return value

    def on(self, suffix: str, since: int = 0) -> list[Received]:
        topic = f"{self.prefix}/{suffix}"
        with self._changed:
            return [m for m in self.messages[since:] if m.topic == topic]

    def mark(self) -> int:
        """A position in the record: `on(..., since=mark)` sees only what came after."""
        with self._changed:
            return len(self.messages)

    def latest(self, suffix: str, since: int = 0) -> Received | None:
        found = self.on(suffix, since)
        return found[-1] if found else None

    def state(self, since: int = 0) -> dict | None:
        found = self.latest("state", since)
        return found.json() if found else None

    def wait_state(self, condition: Callable[[dict], bool], what: str, since: int = 0, timeout: float = 20.0) -> dict:
        def matching() -> dict | None:
            state = self.state(since)
            return state if state is not None and condition(state) else None

        return self.wait_for(matching, what, timeout)

    def publish(self, suffix: str, payload: bytes | str | None, qos: int = 1) -> None:
        self.client.publish(f"{self.prefix}/{suffix}", payload, qos=qos).wait_for_publish(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _running_broker(tmp_path_factory: pytest.TempPathFactory, tls: bool = False) -> Iterator[Broker]:
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("mosquitto")
    broker = Broker(binary, folder, make_tls_files(folder) if tls else None)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of the test's own: it may kill and restart it."""
    yield from _running_broker(tmp_path_factory)


@pytest.fixture(scope="module")
def mosquitto_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker shared by a module's tests (which must not kill it)."""
    yield from _running_broker(tmp_path_factory)


@pytest.fixture
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A TLS-only broker that wants client certificates (`broker.tls` has the files)."""
    yield from _running_broker(tmp_path_factory, tls=True)
