"""Controls on the instrument: [controls] knobs and buttons, MIDI learn kept in the state folder,
[presets] selected by program change, MQTT or --preset. Unit tests of the mapping, then the real
daemon with JACK ports and a broker."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mido
import pytest
from daemon_process import DaemonProcess, JackPeer, daemon_sections, save_tiny_weights, toml, wait_online
from fixtures_mqtt import Broker, MqttObserver
from hypothesis import given
from hypothesis import strategies as st

from daemon.cli import main
from daemon.config import ConfigError, ControlBinding, settings_from
from daemon.controls import Controls, knob_value


class Recorder:
    """The app's side of the controls: what they asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply_setting(self, name: str, value: object) -> None:
        self.calls.append(("set", name, value))

    def command(self, action: str) -> None:
        self.calls.append(("cmd", action))

    def select_preset_number(self, number: int) -> None:
        self.calls.append(("preset", number))


def cc(control: int, value: int) -> mido.Message:
    return mido.Message("control_change", control=control, value=value)


def controls(table: dict, state: Path | None = None) -> tuple[Controls, Recorder, list[dict]]:
    recorder, events = Recorder(), []
    return Controls(recorder, events.append, settings_from({"controls": table}, "test").controls, state), recorder, events


@given(st.integers(0, 127), st.integers(0, 127))
def test_a_knob_follows_linearly_within_its_range(a: int, b: int) -> None:
    binding = ControlBinding("temperature", 21, 0.5, 1.5)
    low, high = sorted((a, b))
    assert 0.5 <= knob_value(binding, low) <= knob_value(binding, high) <= 1.5
    assert knob_value(binding, 0) == 0.5 and knob_value(binding, 127) == 1.5
    assert isinstance(knob_value(ControlBinding("answer_bars", 22, 0, 16), a), int)


def test_settings_move_and_actions_fire_crossing_the_middle_upwards() -> None:
    mapped, recorder, _ = controls({"temperature": {"cc": 21, "min": 0.5, "max": 1.5}, "bpm": 22, "panic": 30})
    for message in (cc(21, 127), cc(22, 0), cc(30, 100), cc(30, 127), cc(30, 10), cc(30, 64), cc(31, 127), cc(64, 127)):
        mapped.receive(message)
    mapped.receive(mido.Message("program_change", program=2))
    assert recorder.calls == [("set", "temperature", 1.5), ("set", "bpm", 20.0), ("cmd", "panic"), ("cmd", "panic"),
                              ("preset", 2)]


def test_learn_binds_the_next_controller_and_keeps_it(tmp_path: Path) -> None:
    mapped, recorder, events = controls({"temperature": 21}, tmp_path)
    mapped.learn("top-p")
    mapped.receive(cc(21, 127))  # the learning move itself does nothing else
    mapped.receive(cc(21, 0))
    assert recorder.calls == [("set", "top_p", 0.01)]
    assert events[0] == {"type": "learned", "target": "top_p", "cc": 21}
    assert json.loads((tmp_path / "controls.json").read_text()) == {"top_p": 21}
    again, _, _ = controls({"temperature": 21}, tmp_path)  # a restart: learned wins over the config's controller
    assert again.map() == {"top_p": 21}
    with pytest.raises(ValueError, match="cannot learn 'weights'"):
        mapped.learn("weights")


@pytest.mark.parametrize("table, reason", [
    ({"controls": {"temperature": 130}}, r"temperature = 130 is not a controller number"),
    ({"controls": {"temperature": 21, "panic": 21}}, "panic and temperature both use controller 21"),
    ({"controls": {"temperature": {"cc": 21, "max": 9}}}, r"temperature max: \[jam\] temperature = 9 is out of range"),
    ({"controls": {"volume": 7}}, "volume is neither a setting a knob can move"),
    ({"controls": {"pause": {"cc": 7, "min": 1}}}, "an action has no min or max"),
    ({"controls": {"panic": 5}, "jam": {"handover_cc": 5}}, "the hand-over controller"),
    ({"presets": {"warm": {"temperature": 9}}}, r"preset 'warm': \[jam\] temperature = 9 is out of range"),
    ({"presets": {"warm": {"colour": "red"}}}, "preset 'warm': colour is not a live setting"),
])
def test_bad_controls_and_presets_are_refused_naming_the_key(table: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        settings_from(table, "config.toml")


def test_a_bad_preset_is_refused_at_start(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml({"presets.far": {"weights": str(tmp_path / "nowhere")}}))
    assert main(["run", "--config", str(config)]) == 2
    assert f"{config}: preset 'far': weights" in capsys.readouterr().err
    config.write_text(toml({"presets.warm": {"temperature": 0.5}}))
    assert main(["run", "--config", str(config), "--preset", "cold"]) == 2
    assert "no preset 'cold'; known: warm" in capsys.readouterr().err


# -- the real daemon --------------------------------------------------------------------
class Instrument:
    def __init__(self, daemon: DaemonProcess, peer: JackPeer, observer: MqttObserver, state: Path) -> None:
        self.daemon, self.peer, self.observer, self.state = daemon, peer, observer, state

    def send(self, message: mido.Message) -> None:
        self.peer.keyboard.send_message(message.bytes())


@pytest.fixture(scope="module")
def instrument(jack_server: object, mosquitto_module: Broker, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Instrument]:
    folder = tmp_path_factory.mktemp("controls")
    peer = JackPeer()
    prefix = f"antiphon/test-{uuid.uuid4().hex[:8]}"
    sections = daemon_sections(peer, save_tiny_weights(folder / "lstm"), mosquitto_module, prefix)
    sections["controls"] = {"temperature": {"cc": 21, "min": 0.5, "max": 1.5}, "answer_bars": 22}
    sections["presets.warm"] = {"temperature": 0.3, "answer_bars": 1}
    sections["presets.wild"] = {"temperature": 1.7, "top_p": 0.8}
    state = folder / "state"
    daemon = DaemonProcess(folder, sections, env={"STATE_DIRECTORY": str(state)}).start().wait_ready()
    observer = MqttObserver(mosquitto_module, prefix)
    wait_online(observer)
    observer.wait_state(lambda s: True, "the retained state")
    yield Instrument(daemon, peer, observer, state)
    observer.close()
    daemon.kill()
    peer.close()


@pytest.mark.jack
@pytest.mark.mqtt
def test_a_controller_moves_the_temperature(instrument: Instrument) -> None:
    mark = instrument.observer.mark()
    instrument.send(cc(21, 127))
    instrument.observer.wait_state(lambda s: s["temperature"] == 1.5, "temperature 1.5 from the knob", mark)
    instrument.send(cc(21, 0))
    instrument.observer.wait_state(lambda s: s["temperature"] == 0.5, "temperature 0.5 from the knob", mark)
    instrument.send(cc(22, 127))
    instrument.observer.wait_state(lambda s: s["answer_bars"] == 16, "answer_bars 16 from the knob", mark)


@pytest.mark.jack
@pytest.mark.mqtt
def test_a_program_change_selects_a_preset(instrument: Instrument) -> None:
    mark = instrument.observer.mark()
    instrument.send(mido.Message("program_change", program=1))
    instrument.observer.wait_state(lambda s: (s["preset"], s["temperature"], s["top_p"]) == ("wild", 1.7, 0.8),
                                   "the preset wild", mark)
    instrument.observer.publish("set/preset", "warm")
    instrument.observer.wait_state(lambda s: (s["preset"], s["temperature"], s["answer_bars"]) == ("warm", 0.3, 1),
                                   "the preset warm", mark)
    instrument.observer.publish("set/preset", "cold")
    error = instrument.observer.wait_for(lambda: instrument.observer.latest("error", mark), "an error for cold")
    assert "no preset 'cold'; known: warm, wild" in error.json()["reason"]


@pytest.mark.jack
@pytest.mark.mqtt
def test_midi_learn_binds_the_next_controller_across_a_restart(instrument: Instrument) -> None:
    observer = instrument.observer
    mark = observer.mark()
    observer.publish("cmd/learn", "top_p")
    # The daemon logs when it listens for the controller; moving it earlier would not be learned.
    instrument.daemon.wait_for_log("MIDI learn: move the controller for top_p")
    instrument.send(cc(40, 127))
    observer.wait_state(lambda s: s["controls"].get("top_p") == 40, "top_p bound to controller 40", mark)
    instrument.send(cc(40, 0))
    observer.wait_state(lambda s: s["top_p"] == 0.01, "top_p 0.01 from the learned knob", mark)
    assert json.loads((instrument.state / "controls.json").read_text()) == {"top_p": 40}

    instrument.daemon.signal(signal.SIGTERM)
    assert instrument.daemon.wait(timeout=30) == 0
    restarted = observer.mark()
    instrument.daemon.start()
    wait_online(observer, restarted)
    observer.wait_state(lambda s: s["controls"].get("top_p") == 40, "the learned binding after a restart", restarted)
    since = observer.mark()
    deadline = time.monotonic() + 20
    # The ports connect around "online": move the knob until the daemon hears it.
    while not (state := observer.state(since)) or state["top_p"] != 1.0:
        assert time.monotonic() < deadline, f"the learned knob did nothing after the restart: {state}"
        instrument.send(cc(40, 127))
        time.sleep(0.2)


@pytest.mark.jack
@pytest.mark.mqtt
@pytest.mark.parametrize("topic, payload, reason", [
    ("cmd/learn", "weights", "cannot learn 'weights'"),
    ("cmd/learn", "", "expected a setting or action name"),
    ("set/paused", "maybe", "expected ON or OFF"),
])
def test_named_commands_are_checked(instrument: Instrument, topic: str, payload: str, reason: str) -> None:
    mark = instrument.observer.mark()
    instrument.observer.publish(topic, payload)
    error = instrument.observer.wait_for(lambda: instrument.observer.latest("error", mark), f"an error for {topic}")
    assert reason in error.json()["reason"] and error.json()["topic"].endswith(topic)
