"""The sd_notify protocol against a real unix datagram socket standing in for systemd's."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import sdnotify


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def systemd_socket(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket, announced in NOTIFY_SOCKET like systemd does."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2.0)
        clean_env.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_without_notify_socket_nothing_is_sent(clean_env: pytest.MonkeyPatch) -> None:
    assert sdnotify.notify("READY=1") is False


def test_lines_arrive_as_one_newline_separated_datagram(systemd_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1", "STATUS=listening on antiphon:in") is True
    assert systemd_socket.recv(4096) == b"READY=1\nSTATUS=listening on antiphon:in"


def test_abstract_namespace_address(clean_env: pytest.MonkeyPatch) -> None:
    name = f"antiphon-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_a_dead_socket_returns_false_without_raising(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    # The socket file is left behind with nobody reading it: connection refused.
    clean_env.setenv("NOTIFY_SOCKET", str(path))
    assert sdnotify.notify("WATCHDOG=1") is False
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "never-existed"))
    assert sdnotify.notify("WATCHDOG=1") is False
    clean_env.setenv("NOTIFY_SOCKET", "not-a-socket-address")
    assert sdnotify.notify("WATCHDOG=1") is False


def test_watchdog_interval_is_half_the_period_for_this_process(clean_env: pytest.MonkeyPatch) -> None:
    assert sdnotify.watchdog_interval() is None
    clean_env.setenv("WATCHDOG_USEC", "20000000")
    assert sdnotify.watchdog_interval() == 10.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 10.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    for bad in ("0", "-5", "soon", ""):
        clean_env.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


def test_watchdog_task_returns_at_once_when_not_asked_for(systemd_socket: socket.socket,
                                                           clean_env: pytest.MonkeyPatch) -> None:
    asyncio.run(asyncio.wait_for(sdnotify.watchdog_task(), timeout=1.0))
    clean_env.setenv("WATCHDOG_USEC", "100000")
    clean_env.setenv("WATCHDOG_PID", "1")  # another process: the pings are not ours to send
    asyncio.run(asyncio.wait_for(sdnotify.watchdog_task(), timeout=1.0))
    systemd_socket.settimeout(0.1)
    with pytest.raises(TimeoutError):
        systemd_socket.recv(4096)


def test_watchdog_pings_stop_while_the_event_loop_is_stuck(systemd_socket: socket.socket,
                                                           clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    arrivals: list[float] = []

    def listen() -> None:
        systemd_socket.settimeout(0.5)
        while True:
            try:
                message = systemd_socket.recv(4096)
            except TimeoutError:
                return
            assert message == b"WATCHDOG=1"
            arrivals.append(time.monotonic())

    listener = threading.Thread(target=listen)
    listener.start()

    async def run() -> tuple[float, float]:
        pinger = asyncio.create_task(sdnotify.watchdog_task())
        await asyncio.sleep(0.3)
        stuck_from = time.monotonic()
        time.sleep(0.4)  # the loop is stuck: no pings may go out
        stuck_until = time.monotonic()
        await asyncio.sleep(0.3)
        pinger.cancel()
        return stuck_from, stuck_until

    stuck_from, stuck_until = asyncio.run(run())
    listener.join()
    before = [t for t in arrivals if t < stuck_from]
    during = [t for t in arrivals if stuck_from + 0.01 < t < stuck_until]
    after = [t for t in arrivals if t >= stuck_until]
    assert len(before) >= 3, arrivals
    assert during == []
    assert len(after) >= 2, arrivals
