"""The shipped systemd units: systemd-analyze verify is silent, the service contract holds,
and the hardening keeps ALSA, JACK and PyTorch working."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
SYSTEM_UNIT = SYSTEMD / "antiphon.service"
USER_UNIT = SYSTEMD / "antiphon-user.service"
# The only thing verify may say: the daemon is not installed where the unit expects it.
NOT_INSTALLED = re.compile(r"^\S+\.service: Command \S+ is not executable: No such file or directory$")
# systemd-analyze security's exposure for the system service (0 = locked down, 10 = none).
MAX_SYSTEM_EXPOSURE = 2.5

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is missing (Debian: apt-get install systemd)"
)


def unit(path: Path) -> configparser.ConfigParser:
    # Repeated keys (DeviceAllow=, SystemCallFilter=) are legal in units: keep the last.
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(path.read_text())
    return parser


def analyze(tmp_path: Path, *args: str, user: bool) -> subprocess.CompletedProcess:
    """systemd-analyze in a scratch runtime dir (a user manager needs one) and home."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path), "SYSTEMD_COLORS": "0"}
    command = [ANALYZE, *(["--user"] if user else []), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


def unexpected_lines(result: subprocess.CompletedProcess) -> list[str]:
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.strip() and not NOT_INSTALLED.match(line.strip())]


@needs_analyze
@pytest.mark.parametrize("path, user", [(SYSTEM_UNIT, False), (USER_UNIT, True)], ids=["system", "user"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, path: Path, user: bool) -> None:
    # verify exits 0 even for invalid units: any output besides the missing executable fails.
    result = analyze(tmp_path, "verify", str(path), user=user)
    assert unexpected_lines(result) == []


@needs_analyze
def test_verify_filter_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "antiphon.service"
    broken.write_text(SYSTEM_UNIT.read_text().replace("Type=notify", "Type=notiffy")
                      .replace("WatchdogSec=", "WatchdogSecs="))
    problems = unexpected_lines(analyze(tmp_path, "verify", str(broken), user=False))
    assert any("notiffy" in line for line in problems)
    assert any("WatchdogSecs" in line for line in problems)


@needs_analyze
def test_system_service_exposure_score(tmp_path: Path) -> None:
    result = analyze(tmp_path, "security", "--offline=true", str(SYSTEM_UNIT), user=False)
    found = re.search(r"Overall exposure level for antiphon\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_SYSTEM_EXPOSURE


@pytest.mark.parametrize("path", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_service_contract(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    # Debian 12's systemd 252 has no notify-reload: reload is a SIGHUP.
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # the CLI's exit status for a bad configuration
    assert service["ConfigurationDirectory"] == "antiphon"
    assert int(service["WatchdogSec"]) > 0
    assert 2 < int(service["TimeoutStopSec"]) <= 10
    start_limit = unit(path)["Unit"]
    assert int(start_limit["StartLimitBurst"]) > 0 and int(start_limit["StartLimitIntervalSec"]) > 0


@pytest.mark.parametrize("path", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_hardening_keeps_jack_and_pytorch_working(path: Path) -> None:
    service = unit(path)["Service"]
    assert service.get("RestrictRealtime", "no") == "no"  # JACK's realtime process thread
    assert service.get("MemoryDenyWriteExecute", "no") == "no"  # PyTorch's generated CPU kernels
    assert service.get("PrivateDevices", "no") == "no"  # /dev/snd
    assert "AF_UNIX" in service["RestrictAddressFamilies"]  # JACK and PipeWire sockets
    assert "AF_INET" in service["RestrictAddressFamilies"]  # MQTT


def test_system_service_runs_as_its_own_user_with_alsa_only() -> None:
    service = unit(SYSTEM_UNIT)["Service"]
    assert service["User"] == "antiphon"
    assert service["SupplementaryGroups"] == "audio"
    assert "/etc/antiphon/" in service["ExecStart"]
    assert service["DevicePolicy"] == "closed"
    allowed = [line.split("=", 1)[1] for line in SYSTEM_UNIT.read_text().splitlines()
               if line.startswith("DeviceAllow=")]
    assert "char-alsa rw" in allowed


def test_user_unit_can_reach_the_runtime_dir() -> None:
    # PipeWire's and JACK's sockets live in /run/user/<uid>, which ProtectHome=yes hides.
    service = unit(USER_UNIT)["Service"]
    assert service.get("ProtectHome", "no") in ("no", "read-only")
    assert service.get("User") is None


@pytest.mark.parametrize("path", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_exec_start_is_a_valid_daemon_command_line(path: Path) -> None:
    from daemon.cli import build_parser

    words = unit(path)["Service"]["ExecStart"].split()
    args = build_parser().parse_args(words[1:])
    assert args.command == "run"
