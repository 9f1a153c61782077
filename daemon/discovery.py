"""Home Assistant MQTT discovery: the retained config documents that make the daemon appear as one
device with its entities, no YAML written.

Each entity's command topic is one of the daemon's own `set/` or `cmd/` topics, its state comes from
the retained state document through a value template, and its availability is `<prefix>/status`
(online/offline, Home Assistant's default payloads). A document is published retained at
`<discovery prefix>/<component>/<node id>/<object id>/config`; an empty retained document there
removes the entity (discovery turned off).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from daemon.config import LIVE_SETTINGS, setting_bounds, setting_choices

DEFAULT_PREFIX = "homeassistant"
# The app's event (never published) that the presets or weights the selects offer have changed.
DISCOVERY_CHANGED = "discovery_changed"


class Entity(NamedTuple):
    component: str  # number, select, switch, button, sensor
    object_id: str
    fields: dict[str, Any]  # name, topics (relative to the daemon's prefix: "set/x"), templates...


def node_id(prefix: str) -> str:
    """The daemon's topic prefix as a discovery node id (letters, digits, _ and - only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix)


def _number(name: str, title: str, step: float, icon: str) -> Entity:
    low, high = setting_bounds(LIVE_SETTINGS[name])
    return Entity("number", name, {
        "name": title, "command_topic": f"set/{name}", "value_template": f"{{{{ value_json.{name} }}}}",
        "min": low, "max": high, "step": step, "mode": "slider", "icon": icon,
    })


def _select(name: str, title: str, icon: str, shown_as: str = "") -> Entity:
    """`shown_as`: the setting's name in the state document, where that is another (jam_mode)."""
    return Entity("select", shown_as or name, {"name": title, "command_topic": f"set/{name}",
                                               "options": list(setting_choices(LIVE_SETTINGS[name])),
                                               "value_template": f"{{{{ value_json.{shown_as or name} }}}}", "icon": icon})


def entities(weights: list[str], presets: list[str]) -> list[Entity]:
    """What the daemon offers: numbers, selects, a switch, buttons, sensors."""
    found = [
        _number("temperature", "Temperature", 0.05, "mdi:thermometer"),
        _number("top_p", "Top-p", 0.01, "mdi:chart-bell-curve"),
        _number("answer_bars", "Answer bars", 1, "mdi:music-note-whole"),
        Entity("select", "weights", {"name": "Weights", "command_topic": "set/weights", "options": weights,
                                     "value_template": "{{ value_json.weights.name }}", "icon": "mdi:brain"}),
        _select("tempo_mode", "Tempo mode", "mdi:metronome"),
        _select("click", "Click", "mdi:metronome-tick"),
        _select("mode", "Jam mode", "mdi:account-music", shown_as="jam_mode"),
        # The switch's state is compared with payload_on/payload_off (ON/OFF), as set/paused takes them.
        Entity("switch", "paused", {"name": "Paused", "command_topic": "set/paused", "payload_on": "ON",
                                    "payload_off": "OFF", "value_template": "{{ 'ON' if value_json.paused else 'OFF' }}",
                                    "icon": "mdi:pause"}),
        Entity("button", "panic", {"name": "Panic", "command_topic": "cmd/panic", "icon": "mdi:alert-octagon"}),
        Entity("button", "count_in", {"name": "Count-in", "command_topic": "cmd/count-in", "icon": "mdi:metronome-tick"}),
        Entity("button", "next_weights", {"name": "Next weights", "command_topic": "cmd/next-weights",
                                          "icon": "mdi:skip-next"}),
        Entity("sensor", "mode", {"name": "State", "value_template": "{{ value_json.mode }}", "icon": "mdi:piano"}),
        Entity("sensor", "bpm", {"name": "Tempo", "value_template": "{{ value_json.bpm }}",
                                 "unit_of_measurement": "bpm", "icon": "mdi:metronome"}),
        Entity("sensor", "latency", {"name": "Last answer latency", "value_template": "{{ value_json.last_latency_ms }}",
                                     "unit_of_measurement": "ms", "state_class": "measurement",
                                     "device_class": "duration", "icon": "mdi:timer-outline"}),
    ]
    if presets:
        found.insert(4, Entity("select", "preset", {"name": "Preset", "command_topic": "set/preset", "options": presets,
                                                    "value_template": "{{ value_json.preset }}",
                                                    "icon": "mdi:playlist-music"}))
    return found


def config_topic(discovery_prefix: str, prefix: str, entity: Entity) -> str:
    return f"{discovery_prefix}/{entity.component}/{node_id(prefix)}/{entity.object_id}/config"


def documents(discovery_prefix: str, prefix: str, weights: list[str], presets: list[str], version: str
              ) -> list[tuple[str, str]]:
    """(topic, retained JSON document) for every entity."""
    node = node_id(prefix)
    device = {"identifiers": [node], "name": f"Antiphon {prefix.rsplit('/', 1)[-1]}", "manufacturer": "Antiphon",
              "model": "jam daemon", "sw_version": version}
    found = []
    for entity in entities(weights, presets):
        document = {key: f"{prefix}/{value}" if key == "command_topic" else value for key, value in entity.fields.items()}
        document.update({
            "unique_id": f"{node}_{entity.object_id}", "object_id": f"{node}_{entity.object_id}",
            "availability_topic": f"{prefix}/status", "device": device,
        })
        if "value_template" in document:
            document["state_topic"] = f"{prefix}/state"
        found.append((config_topic(discovery_prefix, prefix, entity), json.dumps(document, separators=(",", ":"))))
    return found


def removals(discovery_prefix: str, prefix: str, weights: list[str], presets: list[str]) -> list[str]:
    """The config topics to clear (an empty retained document each) when discovery is off. A preset
    select is cleared even without presets: the config may have had some before."""
    every = entities(weights, presets or ["-"])
    return [config_topic(discovery_prefix, prefix, entity) for entity in every]
