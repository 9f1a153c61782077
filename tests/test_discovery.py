"""Home Assistant MQTT discovery: the documents (their templates rendered against a state document as
Home Assistant renders them, with Jinja), and the real daemon publishing them retained, obeying
an entity's command topic, and removing them when discovery is turned off."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, JackPeer, daemon_sections, save_tiny_weights, toml, wait_online
from fixtures_mqtt import Broker, MqttObserver

from daemon.discovery import documents

jinja2 = pytest.importorskip("jinja2")  # torch's own dependency
PREFIX = "antiphon/living room"
STATE = {"mode": "answering", "weights": {"name": "lstm", "path": "/w/lstm", "kind": "lstm"}, "temperature": 0.8,
         "top_p": 0.9, "bpm": 100.0, "answer_bars": 2, "paused": True, "preset": "warm", "last_latency_ms": 2.5,
         "tempo_mode": "follow", "click": "count-in", "jam_mode": "accompany"}


def render(template: str, state: dict) -> str:
    return jinja2.Template(template).render(value_json=state)


def test_documents_name_one_device_and_the_daemons_own_topics() -> None:
    found = documents("homeassistant", PREFIX, ["lstm", "transformer"], ["warm", "wild"], "1.2.3")
    docs = {topic: json.loads(document) for topic, document in found}
    assert "homeassistant/number/antiphon_living_room/temperature/config" in docs
    assert len({d["unique_id"] for d in docs.values()}) == len(docs) == 15
    assert all(d["availability_topic"] == f"{PREFIX}/status" for d in docs.values())
    assert len({json.dumps(d["device"]) for d in docs.values()}) == 1
    components = sorted(topic.split("/")[1] for topic in docs)
    assert components == ["button"] * 3 + ["number"] * 3 + ["select"] * 5 + ["sensor"] * 3 + ["switch"]
    rendered = {topic.split("/")[-2]: render(d["value_template"], STATE) for topic, d in docs.items()
                if "value_template" in d}
    assert rendered == {"temperature": "0.8", "top_p": "0.9", "answer_bars": "2", "weights": "lstm", "preset": "warm",
                        "tempo_mode": "follow", "click": "count-in", "jam_mode": "accompany",
                        "paused": "ON", "mode": "answering", "bpm": "100.0", "latency": "2.5"}
    commands = {topic.split("/")[-2]: d["command_topic"] for topic, d in docs.items() if "command_topic" in d}
    assert commands["temperature"] == f"{PREFIX}/set/temperature" and commands["panic"] == f"{PREFIX}/cmd/panic"
    assert commands["paused"] == f"{PREFIX}/set/paused" and commands["count_in"] == f"{PREFIX}/cmd/count-in"
    assert docs["homeassistant/select/antiphon_living_room/weights/config"]["options"] == ["lstm", "transformer"]
    assert docs["homeassistant/select/antiphon_living_room/click/config"]["options"] == ["off", "count-in", "always"]
    assert docs["homeassistant/select/antiphon_living_room/tempo_mode/config"]["options"] == ["fixed", "follow"]
    jam_mode = docs["homeassistant/select/antiphon_living_room/jam_mode/config"]
    assert jam_mode["options"] == ["answer", "accompany"] and jam_mode["command_topic"] == f"{PREFIX}/set/mode"
    assert docs["homeassistant/number/antiphon_living_room/temperature/config"]["min"] == 0
    without_presets = documents("homeassistant", PREFIX, ["lstm"], [], "1.2.3")
    assert not any("/preset/" in topic for topic, _ in without_presets)


@pytest.mark.jack
@pytest.mark.mqtt
def test_the_daemon_appears_in_home_assistant_and_obeys_and_leaves(jack_server: object, mosquitto: Broker,
                                                                    tmp_path: Path) -> None:
    peer = JackPeer()
    prefix = f"antiphon/test-{uuid.uuid4().hex[:8]}"
    discovery = f"ha-{uuid.uuid4().hex[:8]}"
    sections = daemon_sections(peer, save_tiny_weights(tmp_path / "lstm"), mosquitto, prefix)
    sections["mqtt"]["discovery_prefix"] = discovery
    daemon = DaemonProcess(tmp_path, sections).start()
    hub = MqttObserver(mosquitto, discovery)  # Home Assistant's view
    observer = MqttObserver(mosquitto, prefix)
    try:
        daemon.wait_ready()
        wait_online(observer)
        temperature = f"number/{prefix.replace('/', '_')}/temperature/config"
        hub.wait_for(lambda: hub.latest(temperature), "the temperature number's discovery document")
        late = MqttObserver(mosquitto, discovery)  # subscribed afterwards: it gets what is retained
        try:
            message = late.wait_for(lambda: late.latest(temperature), "the retained discovery document")
        finally:
            late.close()
        assert message.retain
        document = message.json()
        assert document["availability_topic"] == f"{prefix}/status"
        mark = observer.mark()
        hub.client.publish(document["command_topic"], "0.7", qos=1).wait_for_publish(timeout=5)
        state = observer.wait_state(lambda s: s["temperature"] == 0.7, "temperature 0.7 from the number entity", mark)
        assert render(document["value_template"], state) == "0.7"

        paused = json.loads(hub.latest(f"switch/{prefix.replace('/', '_')}/paused/config").payload)
        hub.client.publish(paused["command_topic"], paused["payload_on"], qos=1).wait_for_publish(timeout=5)
        observer.wait_state(lambda s: s["paused"] is True, "paused from the switch", mark)

        # A preset added by a reload: the preset select appears.
        preset = f"select/{prefix.replace('/', '_')}/preset/config"
        sections["presets.warm"] = {"temperature": 0.4}
        daemon.config.write_text(toml(sections))
        daemon.signal(signal.SIGHUP)
        offered = hub.wait_for(lambda: hub.latest(preset), "the preset select after a reload")
        assert offered.json()["options"] == ["warm"]

        # Discovery turned off: every document is removed (an empty retained config).
        sections["mqtt"]["discovery_prefix"] = ""
        daemon.config.write_text(toml(sections))
        cleared = hub.mark()
        daemon.signal(signal.SIGHUP)
        hub.wait_for(lambda: hub.on(temperature, cleared) and hub.on(temperature, cleared)[-1].payload == b"",
                     "the temperature number removed")
        published = {m.topic for m in hub.messages[:cleared] if m.payload}
        hub.wait_for(lambda: {m.topic for m in hub.messages[cleared:] if m.payload == b""} >= published,
                     f"all {len(published)} documents removed")
    finally:
        hub.close()
        observer.close()
        daemon.kill()
        peer.close()
