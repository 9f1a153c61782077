"""A plain `pip install` of the built wheel (not editable) into a fresh virtual environment: the
shipped weights and the native kernel's source travel with it, and the commands work from a folder
that is not the checkout. torch comes from the machine's pip cache/wheel folders, not the network."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.paths import installed_version

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
INSTALL_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ folder of a fresh venv with the wheel installed (one per test session)."""
    folder = tmp_path_factory.mktemp("install")
    wheels = folder / "wheels"

    def run(*command: str | Path) -> None:
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT)
    (wheel,) = wheels.glob("antiphon-*.whl")
    run(sys.executable, "-m", "venv", folder / "venv")
    pip = folder / "venv" / "bin" / "pip"
    run(pip, "install", "-q", f"torch=={installed_torch()}")
    run(pip, "install", "-q", wheel)
    yield folder / "venv" / "bin"


def installed_torch() -> str:
    import torch

    return torch.__version__.split("+")[0]


def elsewhere(tmp_path: Path) -> dict:
    """Run from an empty folder with a cache of its own, the checkout out of sight."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {"cwd": tmp_path, "env": {**env, "XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}}


def test_version_from_the_installed_metadata(installed: Path, tmp_path: Path) -> None:
    for command in ("antiphon", "antiphon-train"):
        result = subprocess.run([installed / command, "--version"], capture_output=True, text=True, **elsewhere(tmp_path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{command} {installed_version()}"


def test_the_wheel_carries_weights_and_kernel_source(installed: Path, tmp_path: Path) -> None:
    probe = ("import daemon.paths as p, daemon.native as n; print(p.shipped_weights('transformer')); "
             "print(p.shipped_weights('lstm')); print(n.SOURCE)")
    result = subprocess.run([installed / "python", "-c", probe], capture_output=True, text=True, **elsewhere(tmp_path))
    assert result.returncode == 0, result.stderr
    transformer, lstm, source = (Path(line) for line in result.stdout.split())
    site = installed.parent / "lib"
    for folder in (transformer, lstm):
        assert folder.is_relative_to(site), f"{folder} is not the installed copy"
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert source.is_relative_to(site) and source.is_file()


def test_generate_from_any_folder_with_the_shipped_transformer(installed: Path, tmp_path: Path) -> None:
    # kernel native: the C source is compiled from the installed copy into this test's cache.
    result = subprocess.run([installed / "antiphon", "generate", "--bars", "2", "--out", "take.mid", "--seed", "0",
                             "--kernel", "native"], capture_output=True, text=True, timeout=300, **elsewhere(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "(transformer)" in result.stdout
    assert (tmp_path / "take.mid").stat().st_size > 0


@pytest.mark.jack
def test_run_from_any_folder_with_the_shipped_transformer(installed: Path, jack_server: object, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([installed / "antiphon", "run", "--midi-api", "jack", "--virtual",
                                   "--client-name", f"installed-{uuid.uuid4().hex[:6]}"],
                                  stdout=out, stderr=subprocess.STDOUT, **elsewhere(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while "ready:" not in log.read_text():
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        ready = next(line for line in log.read_text().splitlines() if "ready:" in line)
        assert str(installed.parent / "lib") in ready and "antiphon_weights/transformer" in ready
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
