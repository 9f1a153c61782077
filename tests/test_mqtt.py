"""The MQTT bridge with a real Mosquitto broker and the real daemon process on a JACK server."""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_process import (
    DaemonProcess,
    JackPeer,
    Jam,
    answer_finished,
    answer_heard,
    answer_started,
    daemon_sections,
    events,
    save_tiny_weights,
    sounding,
    start_jam,
    stop_jam,
    wait_online,
)
from fixtures_mqtt import Broker, MqttObserver

from daemon.mqtt import MAX_PAYLOAD_BYTES, CommandError, parse_setting

# every live setting, then what the daemon reports of itself
STATE_KEYS = {"temperature", "top_p", "bpm", "tempo_mode", "click", "answer_bars", "weights", "key", "register", "clashes",
              "jam_mode", "accompany_range", "accompany_tail_bars",
              "mode", "tempo_source", "meter", "ports", "paused", "preset", "controls", "last_latency_ms", "input"}


# -- payload parsing (no broker) -------------------------------------------------------
@pytest.mark.parametrize(
    "name, text, value",
    [
        ("temperature", "0.7", 0.7),
        ("temperature", " 1 ", 1.0),
        ("temperature", '"0.5"', 0.5),  # a JSON string holding a number
        ("top_p", "9.5e-1", 0.95),
        ("bpm", "120", 120.0),
        ("answer_bars", "4", 4),
        ("answer_bars", "4.0", 4),
        ("weights", "lstm", "lstm"),
        ("weights", '"/srv/weights/my model"', "/srv/weights/my model"),
        ("weights", "/srv/weights/123", "/srv/weights/123"),
    ],
)
def test_plain_and_json_payloads_parse(name: str, text: str, value: object) -> None:
    parsed = parse_setting(name, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "name, text, reason",
    [
        ("temperature", "", "empty payload"),
        ("temperature", "hot", "expected a number, got 'hot'"),
        ("temperature", "true", "expected a number, got JSON bool"),
        ("temperature", "[1]", "expected a number, got JSON list"),
        ("temperature", '{"value": 1}', "expected a number, got JSON dict"),
        ("temperature", "null", "expected a number, got JSON NoneType"),
        ("temperature", "NaN", "expected a finite number, got nan"),
        ("temperature", "1e999", "expected a finite number, got inf"),
        ("answer_bars", "2.5", "expected a whole number, got 2.5"),
        ("weights", '""', "expected a non-empty folder name"),
        ("weights", "\"lstm", "invalid JSON string"),
        ("temperature", "[" * 100_000, "JSON nested too deeply"),
    ],
)
def test_bad_payloads_are_rejected_with_the_reason(name: str, text: str, reason: str) -> None:
    with pytest.raises(CommandError) as error:
        parse_setting(name, text)
    assert str(error.value).startswith(reason)


# -- the daemon ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jam(jack_server: object, mosquitto_module: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jam]:
    running = start_jam(tmp_path_factory.mktemp("mqtt-daemon"), mosquitto_module)
    yield running
    stop_jam(running)


@pytest.mark.mqtt
@pytest.mark.jack
def test_online_and_the_retained_state_document(jam: Jam, mosquitto_module: Broker) -> None:
    late = MqttObserver(mosquitto_module, jam.observer.prefix)  # retained: a newcomer gets both at once
    try:
        status = late.wait_for(lambda: late.latest("status"), "retained status")
        state = late.wait_for(lambda: late.latest("state"), "retained state")
    finally:
        late.close()
    assert status.payload == b"online" and status.retain
    assert state.retain
    document = state.json()
    assert set(document) == STATE_KEYS
    assert document["mode"] == "listening"
    assert document["weights"]["kind"] == "lstm"
    assert document["meter"] == "4/4" and document["bpm"] == 240.0 and document["answer_bars"] == 2
    assert document["jam_mode"] == "answer" and document["accompany_range"] == "21-59"
    assert document["ports"] == {"in": {"name": jam.peer.keyboard_port, "connected": True},
                                 "out": {"name": jam.peer.synth_port, "connected": True}}


@pytest.mark.parametrize(
    "topic, payload, key, value",
    [
        ("set/temperature", "0.7", "temperature", 0.7),
        ("set/top_p", '"0.8"', "top_p", 0.8),
        ("set/top-p", "0.95", "top_p", 0.95),
        ("set/answer_length", "3", "answer_bars", 3),
        ("set/answer_bars", "2", "answer_bars", 2),
        ("set/tempo", "200", "bpm", 200.0),
        ("set/bpm", "240", "bpm", 240.0),
        ("set/temperature", "1", "temperature", 1.0),
        ("set/tempo_mode", "follow", "tempo_mode", "follow"),
        ("set/tempo_mode", "fixed", "tempo_mode", "fixed"),  # the tests after these play at a fixed tempo
        ("set/clashes", "free", "clashes", "free"),
        ("set/key", '"F# minor"', "key", "F# minor"),
        ("set/accompany-range", "30-50", "accompany_range", "30-50"),
        ("set/accompany_range", "21-59", "accompany_range", "21-59"),
    ],
)
@pytest.mark.mqtt
@pytest.mark.jack
def test_a_setting_changes_the_state_document(jam: Jam, topic: str, payload: str, key: str, value: object) -> None:
    mark = jam.observer.mark()
    jam.observer.publish(topic, payload)
    state = jam.observer.wait_state(lambda s: s[key] == value, f"{key} == {value}", mark)
    assert state[key] == value
    assert jam.observer.on("error", mark) == []


@pytest.mark.mqtt
@pytest.mark.jack
def test_pause_and_resume(jam: Jam) -> None:
    mark = jam.observer.mark()
    jam.observer.publish("cmd/pause", "")
    jam.observer.wait_state(lambda s: s["paused"] and s["mode"] == "paused", "paused", mark)
    mark = jam.observer.mark()
    jam.observer.publish("cmd/resume", "anything: the payload of a command is ignored")
    jam.observer.wait_state(lambda s: not s["paused"] and s["mode"] == "listening", "resumed", mark)


@pytest.mark.parametrize(
    "topic, payload, reason",
    [
        ("set/temperature", b"hot", "expected a number"),
        ("set/temperature", b"9", "out of range"),
        ("set/answer_bars", b"2.5", "whole number"),
        ("set/top_p", b"\xff\xfe", "not valid UTF-8"),
        ("set/weights", b"/nonexistent/weights", "/nonexistent/weights"),
        ("set/volume", b"3", "unknown setting 'volume'"),
        ("set/mode", b"duet", "not one of the choices"),
        ("set/accompany_range", b"60-20", "not within 21-108"),
        ("cmd/explode", b"", "unknown action 'explode'"),
        ("set/temperature", b"1" * (MAX_PAYLOAD_BYTES + 1), "payload too large"),
    ],
)
@pytest.mark.mqtt
@pytest.mark.jack
def test_a_rejected_command_is_answered_and_changes_nothing(jam: Jam, topic: str, payload: bytes, reason: str) -> None:
    before = jam.observer.state()
    mark = jam.observer.mark()
    jam.observer.publish(topic, payload)
    error = jam.observer.wait_for(lambda: jam.observer.latest("error", mark), f"an error for {topic}").json()
    assert error["topic"] == f"{jam.observer.prefix}/{topic}"
    assert reason in error["reason"]
    assert error["payload"] == payload[:200].decode("utf-8", errors="backslashreplace") or "bytes)" in error["payload"]
    # A state change would be published before the next command's: resume is a no-op here.
    jam.observer.publish("cmd/resume", "")
    after = jam.observer.wait_for(lambda: jam.observer.state(mark), "the state after resume")
    assert after == before


@pytest.mark.mqtt
@pytest.mark.jack
def test_answer_events(jam: Jam) -> None:
    mark = jam.observer.mark()
    answer_started(jam)
    started = events(jam.observer, "answer_started", mark)[0]
    finished = answer_finished(jam, mark)
    assert started["bars"] == 2
    assert finished["bars"] == 2 and finished["notes"] >= 1
    assert finished["tokens_per_s"] > 0 and "latency_ms" in finished


@pytest.mark.mqtt
@pytest.mark.jack
def test_panic_releases_every_sounding_note(jam: Jam) -> None:
    answer_started(jam)
    jam.observer.wait_for(lambda: sounding(jam.peer.messages()), "a note sounding on the synth")
    panicked = time.monotonic()
    jam.observer.publish("cmd/panic", "")
    jam.observer.wait_for(
        lambda: any(m.type == "control_change" and m.control == 123 for m in jam.peer.messages(panicked)),
        "all notes off on the synth",
    )
    time.sleep(0.5)  # anything the stopped answer would still have played
    assert sounding(jam.peer.messages()) == set()
    after_all_off = jam.peer.messages(panicked)
    cut = next(i for i, m in enumerate(after_all_off) if m.type == "control_change" and m.control == 123)
    assert not [m for m in after_all_off[cut:] if m.type == "note_on" and m.velocity > 0]


@pytest.mark.mqtt
@pytest.mark.jack
def test_weights_hot_swap_keeps_the_midi_session(jam: Jam) -> None:
    mark = jam.observer.mark()
    jam.observer.publish("set/weights", str(jam.folder / "transformer"))
    state = jam.observer.wait_state(lambda s: s["weights"]["kind"] == "transformer", "transformer in use", mark)
    assert state["ports"]["in"]["connected"] and state["ports"]["out"]["connected"]
    answer_started(jam)  # the same MIDI connections, the new model
    assert events(jam.observer, "port_lost", mark) == []
    assert jam.observer.on("error", mark) == []
    jam.observer.publish("set/weights", json.dumps(str(jam.folder / "lstm")))
    jam.observer.wait_state(lambda s: s["weights"]["kind"] == "lstm", "lstm back in use", mark)


@pytest.mark.mqtt
@pytest.mark.jack
def test_weights_that_fail_to_load_are_answered_on_error(jam: Jam) -> None:
    broken = jam.folder / "broken"
    shutil.copytree(jam.folder / "lstm", broken)
    for tensors in broken.glob("*.safetensors"):
        tensors.write_bytes(tensors.read_bytes()[:100])
    mark = jam.observer.mark()
    jam.observer.publish("set/weights", str(broken))
    error = jam.observer.wait_for(lambda: jam.observer.latest("error", mark), "an error for the broken weights").json()
    assert error["topic"] == f"{jam.observer.prefix}/set/weights" and error["payload"] == str(broken)
    assert "broken" in error["reason"]
    assert jam.observer.state()["weights"]["kind"] == "lstm"
    assert jam.observer.on("state", mark) == []


@pytest.mark.mqtt
@pytest.mark.jack
def test_port_lost_and_regained_events(jam: Jam) -> None:
    mark = jam.observer.mark()
    jam.peer.close_synth()
    lost = jam.observer.wait_for(lambda: events(jam.observer, "port_lost", mark), "port_lost")[0]
    assert lost["name"] == jam.peer.synth_port
    jam.observer.wait_state(lambda s: not s["ports"]["out"]["connected"], "output disconnected", mark)
    jam.peer.open_synth()
    regained = jam.observer.wait_for(lambda: events(jam.observer, "port_regained", mark), "port_regained")[0]
    assert regained["name"] == jam.peer.synth_port
    jam.observer.wait_state(lambda s: s["ports"]["out"]["connected"], "output connected again", mark)


def malformed_commands(count: int) -> list[tuple[str, bytes]]:
    """Wrong types, out-of-range values, invalid UTF-8, huge payloads, unknown topics."""
    kinds = [
        ("set/temperature", b'"warm"'), ("set/temperature", b"true"), ("set/top_p", b"[0.5]"),
        ("set/bpm", b'{"bpm": 120}'), ("set/answer_bars", b"null"), ("set/weights", b"42"),
        ("set/temperature", b"-1"), ("set/temperature", b"1e308"), ("set/temperature", b"NaN"),
        ("set/top_p", b"0"), ("set/top_p", b"1.5"), ("set/bpm", b"5"), ("set/bpm", b"-Infinity"),
        ("set/answer_bars", b"-1"), ("set/answer_bars", b"17"), ("set/answer_bars", b"2.5"),
        ("set/temperature", b"\xff\xfe\xfd"), ("set/weights", b"\xc3\x28"), ("cmd/panic", b"\x80"),
        ("set/temperature", b"0." + b"5" * 10_000), ("set/weights", b"w" * 100_000),
        ("set/volume", b"1"), ("cmd/explode", b""), ("set/temperature/extra", b"1"), ("set", b"1"),
        ("cmd", b"pause"), ("set/", b"1"), ("set/weights", b""), ("set/weights", b"/no/such/folder"),
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


@pytest.mark.mqtt
@pytest.mark.jack
@pytest.mark.slow
def test_a_thousand_malformed_payloads_each_get_an_error(jam: Jam) -> None:
    before = jam.observer.state()
    commands = malformed_commands(1000)
    mark = jam.observer.mark()
    sent = [jam.observer.client.publish(f"{jam.observer.prefix}/{topic}", payload, qos=1)
            for topic, payload in commands]
    for info in sent:
        info.wait_for_publish(timeout=30)
    errors = jam.observer.wait_for(
        lambda: (found := jam.observer.on("error", mark)) and len(found) >= len(commands) and found,
        "1000 errors", timeout=120,
    )
    documents = [e.json() for e in errors]
    assert len(documents) == len(commands)
    assert all(set(d) == {"topic", "payload", "reason"} and d["reason"] for d in documents)
    assert Counter(d["topic"] for d in documents) == Counter(f"{jam.observer.prefix}/{t}" for t, _ in commands)
    # Nothing changed, and the daemon still answers a player and a valid command.
    assert jam.observer.on("state", mark) == []
    assert jam.observer.state() == before
    answer_started(jam)
    mark = jam.observer.mark()
    jam.observer.publish("set/temperature", "0.9")
    jam.observer.wait_state(lambda s: math.isclose(s["temperature"], 0.9), "temperature 0.9", mark)
    jam.observer.publish("set/temperature", "1.0")


@pytest.mark.mqtt
@pytest.mark.jack
@pytest.mark.slow
def test_broker_restart_daemon_returns_online_with_its_state(
    jack_server: object, mosquitto: Broker, tmp_path: Path
) -> None:
    running = start_jam(tmp_path, mosquitto, mqtt_flags=True)
    try:
        observer = running.observer
        mark = observer.mark()
        observer.publish("set/temperature", "0.42")
        observer.wait_state(lambda s: s["temperature"] == 0.42, "temperature 0.42", mark)
        mosquitto.kill()
        # The music goes on without the broker.
        answer_heard(running)
        mark = observer.mark()
        mosquitto.start()  # a fresh broker: nothing retained until the daemon republishes
        wait_online(observer, mark)
        state = observer.wait_state(lambda s: True, "the republished state", mark)
        assert state["temperature"] == 0.42
        assert state["ports"]["out"]["connected"]
        assert "unreachable" in running.daemon.log_text()
        # A crash (no clean disconnect) fires the Last Will.
        mark = observer.mark()
        running.daemon.kill()
        will = observer.wait_for(lambda: observer.latest("status", mark), "the Last Will")
        assert will.payload == b"offline"
    finally:
        stop_jam(running)



@pytest.mark.mqtt
@pytest.mark.jack
def test_tls_with_a_client_certificate(jack_server: object, mosquitto_tls: Broker, tmp_path: Path) -> None:
    tls = mosquitto_tls.tls
    peer = JackPeer()
    prefix = "antiphon/tls-test"
    sections = daemon_sections(peer, save_tiny_weights(tmp_path / "lstm"), mosquitto_tls, prefix)
    sections["mqtt"].update(tls_ca=str(tls.ca), tls_cert=str(tls.client_cert), tls_key=str(tls.client_key))
    daemon = DaemonProcess(tmp_path, sections).start().wait_ready()
    observer = MqttObserver(mosquitto_tls, prefix)
    jam = Jam(daemon, peer, observer, tmp_path)
    try:
        wait_online(observer)
        mark = observer.mark()
        observer.publish("set/temperature", "0.6")
        observer.wait_state(lambda s: s["temperature"] == 0.6, "temperature 0.6 over TLS", mark)
        # Without its certificate the broker turns the daemon away; the music goes on.
        mark = observer.mark()
        daemon.config.write_text(daemon.config.read_text().replace(f'tls_cert = "{tls.client_cert}"\n', ""))
        daemon.signal(signal.SIGHUP)
        assert observer.wait_for(lambda: observer.latest("status", mark), "offline").payload == b"offline"
        daemon.wait_for_log("unreachable", timeout=20)
        answer_heard(jam)
        assert daemon.alive
    finally:
        stop_jam(jam)


@pytest.mark.mqtt
@pytest.mark.jack
def test_switching_to_accompany_and_back_mid_session(jam: Jam) -> None:
    answer_started(jam)
    mark = jam.observer.mark()
    jam.observer.publish("set/mode", "accompany")
    jam.observer.wait_state(lambda s: s["jam_mode"] == "accompany", "accompany mode", mark)
    time.sleep(1.5)  # the answer may still be playing: it was stopped by the switch
    played = time.monotonic()
    jam.peer.play_phrase([72, 76, 79, 84] * 4)  # four bars' worth at 240 bpm
    jam.observer.wait_for(lambda: events(jam.observer, "accompaniment_started", mark), "accompaniment_started")
    model = [m for m in jam.peer.messages(played) if m.type == "note_on" and m.velocity > 0]
    assert model and all(m.note <= 59 for m in model), model  # it played along, in the default range 21-59
    assert not events(jam.observer, "answer_started", mark)  # no turn-taking while accompanying
    jam.observer.wait_for(lambda: events(jam.observer, "accompaniment_finished", mark), "accompaniment_finished")
    # Its last notes end at the bar line it stops at, about when it reports: each is released soon after.
    jam.observer.wait_for(lambda: not sounding(jam.peer.messages(played)), "every accompaniment note released", 2.0)
    mark = jam.observer.mark()
    jam.observer.publish("set/mode", "answer")
    jam.observer.wait_state(lambda s: s["jam_mode"] == "answer", "answer mode", mark)
    answer_started(jam)
