"""A private JACK server with the dummy driver (no sound card), for the demo, tests and bench.

`with JackServer() as server:` starts `jackd -n <name> -d dummy`, points this process (and the
children it starts) at it through JACK_DEFAULT_SERVER, and kills it on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid

import rtmidi

START_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0


def jackd_path() -> str | None:
    return shutil.which("jackd")


def jack_running(name: str | None = None) -> bool:
    """A JACK server answers (the default one, or `name`).

    Asked by `jack_wait -c` in a child process whose stderr goes nowhere: libjack prints a few
    lines ("Cannot connect to server socket...") for every failed attempt, which a user waiting
    for a server reads as failures. Without jack_wait the client is opened here, noise and all."""
    tool = shutil.which("jack_wait")
    if tool is not None:
        env = os.environ if name is None else {**os.environ, "JACK_DEFAULT_SERVER": name}
        try:
            answer = subprocess.run([tool, "-c"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S).stdout
        except subprocess.TimeoutExpired:
            return False
        return answer.strip() == b"running"
    previous = os.environ.get("JACK_DEFAULT_SERVER")
    if name is not None:
        os.environ["JACK_DEFAULT_SERVER"] = name
    try:
        client = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "antiphon-probe")
    except rtmidi.SystemError:
        return False
    finally:
        if name is not None:
            _restore(previous)
    client.delete()
    return True


def _restore(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("JACK_DEFAULT_SERVER", None)
    else:
        os.environ["JACK_DEFAULT_SERVER"] = previous


class JackServer:
    """jackd with the dummy driver; period frames set the MIDI delivery granularity."""

    def __init__(self, name: str | None = None, rate: int = 48000, period: int = 256, realtime: bool = False) -> None:
        self.name = name or f"antiphon-{uuid.uuid4().hex[:8]}"
        # Realtime is how musicians run JACK (its clients' process threads get SCHED_FIFO);
        # off by default because a container or CI runner may not grant realtime priority.
        self.realtime = realtime
        self.rate = rate
        self.period = period
        self.process: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="jackd-", suffix=".log", delete=False)
        self._previous = os.environ.get("JACK_DEFAULT_SERVER")

    @property
    def period_ms(self) -> float:
        return 1000.0 * self.period / self.rate

    def start(self) -> JackServer:
        binary = jackd_path()
        if binary is None:
            raise RuntimeError("jackd is not installed (apt install jackd2)")
        command = [binary, "--realtime" if self.realtime else "--no-realtime", "-n", self.name,
                   "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not jack_running(self.name):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"jackd did not start: {self.tail()}")
            time.sleep(0.05)
        os.environ["JACK_DEFAULT_SERVER"] = self.name
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        _restore(self._previous)

    def tail(self) -> str:
        try:
            with open(self.log.name, errors="replace") as handle:
                return handle.read()[-500:].strip()
        except OSError:
            return ""

    def __enter__(self) -> JackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.unlink(self.log.name)
