"""Shared fixtures: a private JACK dummy server for the session, tiny random weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from daemon.jack_server import JackServer, jackd_path

# CI (.ci/run exports CI=1) runs the property tests on the same examples every time, so that what
# lands does not hang on which examples a run happened to draw; runs here draw new ones, and keep
# any that fail in .hypothesis/ to try first next time.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The real-Mosquitto fixtures (tests/ is on sys.path: the folder has no __init__.py).
pytest_plugins = ["fixtures_mqtt"]


@pytest.fixture(scope="session", autouse=True)
def private_state_and_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Takes and learned controls of every daemon a test starts (and of this process) go to the
    session's temporary folder, never the user's (~/.local/state, ~/.local/share)."""
    folder = tmp_path_factory.mktemp("xdg")
    saved = {name: os.environ.get(name) for name in ("XDG_STATE_HOME", "XDG_DATA_HOME", "STATE_DIRECTORY")}
    os.environ.pop("STATE_DIRECTORY", None)
    os.environ.update(XDG_STATE_HOME=str(folder / "state"), XDG_DATA_HOME=str(folder / "data"))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def jack_server() -> Iterator[JackServer]:
    """jackd -d dummy for the whole session (JACK_DEFAULT_SERVER points at it); killed at the end."""
    if jackd_path() is None:
        pytest.skip("jackd is not installed (apt install jackd2)")
    # 256 frames (5.3 ms): JACK drops the MIDI of a cycle a starved client misses, and these
    # tests share two cores with everything else; the latency benchmark uses a shorter period.
    with JackServer(period=256) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A randomly initialised one-layer Transformer saved as a weights folder (fast to load and run)."""
    import torch

    from daemon.model import build_model, config_from_dict
    from daemon.weights import save_weights

    torch.manual_seed(0)
    config = config_from_dict({"kind": "transformer", "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64})
    folder = tmp_path_factory.mktemp("weights") / "tiny"
    save_weights(folder, build_model(config), config, {"purpose": "tests: random, untrained"})
    return folder


@pytest.fixture(scope="session")
def eager_weights(tmp_path_factory) -> Path:
    """The tiny Transformer, made to begin notes often: for tests of what it plays along."""
    from daemon_process import save_tiny_weights

    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "eager", "transformer", eager=True)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: training tests stay repeatable and leave a core free."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
