"""The broker password from a file, as systemd's LoadCredential= hands it over: a broker that
refuses anonymous clients accepts the daemon, and the password is nowhere on its command line."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, JackPeer, daemon_sections, save_tiny_weights, wait_online
from fixtures_mqtt import Broker, MqttObserver

PASSWORD = f"pw-{uuid.uuid4().hex}"


@pytest.mark.jack
@pytest.mark.mqtt
def test_the_password_comes_from_a_credential_file(jack_server: object, mosquitto: Broker, tmp_path: Path) -> None:
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(passwd).exists():
        pytest.skip("mosquitto_passwd is not installed (apt-get install mosquitto)")
    users = tmp_path / "users"
    subprocess.run([passwd, "-c", "-b", str(users), "antiphon", PASSWORD], check=True, capture_output=True)
    users.chmod(0o600)
    mosquitto.kill()
    text = mosquitto.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
    mosquitto.config.write_text(text + f"password_file {users}\n")
    mosquitto.start()

    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "mqtt-password").write_text(PASSWORD + "\n")
    peer = JackPeer()
    prefix = f"antiphon/test-{uuid.uuid4().hex[:8]}"
    sections = daemon_sections(peer, save_tiny_weights(tmp_path / "lstm"), mosquitto, prefix)
    sections["mqtt"].update(username="antiphon", password_file="mqtt-password")
    daemon = DaemonProcess(tmp_path, sections, env={"CREDENTIALS_DIRECTORY": str(credentials)}).start()
    observer = None
    try:
        daemon.wait_ready()
        observer = MqttObserver(mosquitto, prefix, username="antiphon", password=PASSWORD)
        wait_online(observer)
        command_line = Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in command_line
        assert PASSWORD not in daemon.config.read_text()
    finally:
        if observer is not None:
            observer.close()
        daemon.kill()
        peer.close()
