"""Probing for a JACK server says nothing: libjack's "Cannot connect to server socket" lines
(~40 of them while `make demo` waited for its private server) read as a failure to a new user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.jack_server import jackd_path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
from daemon.jack_server import JackServer, jack_running
assert not jack_running("antiphon-absent-server")
with JackServer() as server:
    assert jack_running(server.name)
print("done")
"""


@pytest.mark.skipif(jackd_path() is None, reason="jackd is not installed (apt install jackd2)")
def test_probing_for_a_server_and_starting_one_print_nothing() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n" and done.stderr == ""
