"""Every setting of the daemon: one TOML file, each key also a command-line flag.

The file has one table per section ([midi], [tempo], [jam], [model], [mqtt], [takes], [log],
and the named tables [controls] and [presets.NAME]); flags
override the file. Each setting is declared once below (default, check, what is allowed,
help, flag, and whether it can change while the daemon runs, with its MQTT names); the TOML
reader, the flags of every command, the settings the app and MQTT change at run time
(LIVE_SETTINGS) and the error messages all come from that one place. A bad value is rejected
with the source, the key, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from daemon.keys import parse_key

APP_NAME = "antiphon"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the source, key, value and what is allowed."""


Check = Callable[[Any], Any]


def _setting(
    default: Any, check: Check, allowed: str, help: str, flag: str | None | bool = None,
    live: bool = False, mqtt: tuple[str, ...] = (),
) -> Any:
    """flag: its name (None: derived from the key; False: none, the file only);
    live: changeable while the daemon runs (JamApp.apply_setting, MQTT <prefix>/set/<name>);
    mqtt: other names MQTT accepts for it."""
    metadata = {"check": check, "allowed": allowed, "help": help, "flag": flag, "live": live, "mqtt": mqtt}
    return field(default=default, metadata=metadata)


def finite_number(value: Any, integer: bool = False) -> float | int:
    """A finite number as a float (an int if `integer`); ValueError "not a number", "not a finite
    number" or "not a whole number" otherwise. The numbers' check here and MQTT's payloads share it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number")
    if integer and not (isinstance(value, int) or value.is_integer()):
        raise ValueError("not a whole number")
    if integer:
        return int(value)
    try:
        return float(value)
    except OverflowError:  # an int past any float: past every range too
        raise ValueError("out of range") from None


def number(low: float, high: float, integer: bool = False) -> Check:
    def check(value: Any) -> float | int:
        value = finite_number(value, integer)
        if not low <= value <= high:
            raise ValueError("out of range")
        return value

    check.bounds = (low, high)  # a knob's range ([controls]) is the allowed one unless narrowed
    return check


def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError("not one of the choices")
        return value

    check.options = options  # what a select offers (Home Assistant discovery)
    return check


def either(word: str, numbers: Check) -> Check:
    """The word itself or a number the other check accepts (e.g. "follow" or a velocity)."""

    def check(value: Any) -> str | float | int:
        return word if value == word else numbers(value)

    return check


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("not true or false")
    return value


def meter(value: Any) -> str:
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValueError("not a meter like 4/4")
    top, bottom = value.split("/")
    if not (top.isdigit() and bottom in ("2", "4", "8", "16")):
        raise ValueError("not a meter like 4/4")
    steps = int(top) * 16 // int(bottom)
    if not 1 <= steps <= 31 or int(top) * 16 % int(bottom):
        raise ValueError("a bar must be 1..31 sixteenth notes long")
    return value


def key_setting(value: Any) -> str:
    """"auto" (the call's key), "off" or a key parse_key reads, e.g. "F# minor"."""
    if value in ("auto", "off"):
        return value
    try:
        parse_key(text(value))
    except ValueError:
        raise ValueError("not a key") from None
    return value
def parse_pitch_range(value: Any) -> tuple[int, int]:
    """"LO-HI" MIDI pitches within the piano's 21..108, LO <= HI -> (LO, HI); ValueError saying why."""
    low, dash, high = text(value).strip().partition("-")
    try:
        if not dash:
            raise ValueError
        low, high = int(low), int(high)
    except ValueError:
        raise ValueError("not LO-HI (two MIDI pitches, e.g. 21-59)") from None
    if not 21 <= low <= high <= 108:
        raise ValueError("not within 21-108 with LO <= HI")
    return low, high


def pitch_range(value: Any) -> str:
    parse_pitch_range(value)
    return value.strip()


def topic_prefix(value: Any) -> str:
    """A prefix every daemon topic can be published under (MQTT forbids wildcards there)."""
    value = text(value)
    if any(c in value for c in "+#\0") or value.startswith("$"):
        raise ValueError("not a publishable topic prefix (no +, #, NUL or leading $)")
    return value.rstrip("/")


def default_mqtt_prefix() -> str:
    return f"{APP_NAME}/{socket.gethostname() or 'localhost'}"


@dataclass(frozen=True)
class MidiSettings:
    api: str = _setting("alsa", choice("alsa", "jack"), "alsa or jack", "MIDI system to use", "--midi-api")
    input: str = _setting("", text, "a port name (substring) or empty", "input port to connect to", "--in")
    output: str = _setting("", text, "a port name (substring) or empty", "output port to connect to", "--out")
    virtual: bool = _setting(False, boolean, "true or false",
                             "open virtual ports <client>:in / <client>:out for the sides not given by name "
                             "(also the default when neither --in nor --out is given)", "--virtual")
    client_name: str = _setting(APP_NAME, text, "a name", "MIDI client name of the daemon's ports")
    input_channel: int = _setting(0, number(0, 16, True), "0 (all channels) or 1..16", "channel listened to")
    output_channel: int = _setting(1, number(1, 16, True), "1..16", "channel the answer plays on")


@dataclass(frozen=True)
class TempoSettings:
    bpm: float = _setting(100.0, number(20, 400), "20..400", "tempo in quarter notes per minute",
                          live=True, mqtt=("tempo",))
    meter: str = _setting("4/4", meter, "n/d with d in 2,4,8,16 and a bar of at most 31 sixteenths", "time signature")
    follow_clock: bool = _setting(True, boolean, "true or false", "follow an external MIDI clock when present")
    tempo_mode: str = _setting("fixed", choice("fixed", "follow"), "fixed or follow",
                               "fixed: calls are read at bpm; follow: each call's tempo and beat one are read from "
                               "its onsets (a MIDI clock still wins)", "--tempo-mode", live=True, mqtt=("tempo-mode",))
    tap_cc: int = _setting(-1, number(-1, 127, True), "-1 (off) or a controller 0..127",
                           "controller tapped 3+ times to set the tempo (median interval; the last tap is beat one)")
    count_in_cc: int = _setting(-1, number(-1, 127, True), "-1 (off) or a controller 0..127",
                                "controller that asks for a one-bar count-in (as the MQTT cmd/count-in does)")
    click: str = _setting("off", choice("off", "count-in", "always"), "off, count-in or always",
                          "off: clicks only for a count-in asked for; count-in: also a bar of clicks before each "
                          "answer; always: a metronome on every beat from a call's first note until a pause or panic",
                          live=True)
    click_channel: int = _setting(10, number(1, 16, True), "1..16", "channel of the clicks (10: GM drums)")
    click_accent_note: int = _setting(76, number(0, 127, True), "0..127", "click on beat one (76: high wood block)")
    click_note: int = _setting(77, number(0, 127, True), "0..127", "click on the other beats (77: low wood block)")


@dataclass(frozen=True)
class JamSettings:
    wait: str | int = _setting("bar", either("bar", number(1, 64, True)), "\"bar\" or 1..64 sixteenths",
                               "silence before answering: until the next bar line, or a number of 16ths")
    handover_cc: int = _setting(-1, number(-1, 127, True), "-1 (off) or a controller 0..127",
                                "controller (e.g. a foot switch) that hands over at once")
    answer_bars: int = _setting(0, number(0, 16, True), "0 (as long as the call) or 1..16", "bars in an answer",
                                live=True, mqtt=("answer_length", "answer-length"))
    max_answer_bars: int = _setting(4, number(1, 16, True), "1..16", "longest answer when it follows the call")
    temperature: float = _setting(1.0, number(0, 5), "0..5 (0 = greedy)", "sampling temperature", live=True)
    top_p: float = _setting(0.95, number(0.01, 1), "0.01..1", "nucleus sampling mass", live=True, mqtt=("top-p",))
    seed: int = _setting(-1, number(-1, 2**31 - 1, True), "-1 (random) or 0..2147483647", "sampling seed")
    late_policy: str = _setting("play", choice("play", "drop"), "play or drop",
                                "what happens to an answer note that would still be late")
    input_latency_ms: float = _setting(0.0, number(0, 500), "0..500", "keyboard latency subtracted from input")
    output_latency_ms: float = _setting(0.0, number(0, 500), "0..500", "synth latency: notes are sent this early")
    max_note_steps: int = _setting(16, number(1, 32, True), "1..32", "longest answer note in sixteenths")
    velocity: str | int = _setting("follow", either("follow", number(1, 127, True)), "\"follow\" or 1..127",
                                   "answer velocity: follow the player or fixed")
    lead_ms: float = _setting(80.0, number(10, 2000), "10..2000",
                              "how long before the answer's first bar line generation starts (a release "
                              "closer than this to the bar line hands over at the bar line after)")
    lookahead_steps: int = _setting(4, number(1, 32, True), "1..32",
                                    "how far ahead of playback the answer is generated, in sixteenths")
    echo_window_ms: float = _setting(100.0, number(0, 1000), "0..1000",
                                     "an input note this soon after the same output note is our own echo")
    # Steering (daemon/steering.py); what each does to the answer is measured in the README.
    key: str = _setting("off", key_setting, "auto (the call's), off or a key like \"C major\", \"F# minor\", \"Bbm\"",
                        "hold the answer's pitches to a scale (a few chromatic notes allowed): the call's, none, or one",
                        live=True)
    register: str = _setting("free", choice("follow", "free"), "follow or free",
                             "keep the answer's pitches within the call's range widened by 7 semitones", live=True)
    clashes: str = _setting("follow", choice("follow", "free"), "follow or free",
                            "follow: no answer note a semitone against a sounding answer note unless the call has such",
                            live=True)
    density: str | float = _setting(1.5, either("free", number(1, 4)), "free or 1..4",
                                    "the most notes an answer plays in a bar, as a multiple of the call's notes per bar")
    barge_in: bool = _setting(True, boolean, "true or false", "stop the answer when the player plays "
                              "(answer mode only)")
    mode: str = _setting("answer", choice("answer", "accompany"), "answer or accompany",
                         "take turns with the player (answer) or play along while the player plays (accompany)",
                         "--mode", live=True)
    accompany_range: str = _setting("21-59", pitch_range, "LO-HI, MIDI pitches within 21-108",
                                    "the pitches the model plays in accompany mode", "--accompany-range",
                                    live=True, mqtt=("accompany-range",))
    accompany_lookahead_steps: int = _setting(1, number(1, 16, True), "1..16",
                                              "in accompany mode, how far ahead of playback the model decides, "
                                              "in sixteenths (a player's note re-decides what it lands before)",
                                              "--accompany-lookahead")
    accompany_tail_bars: int = _setting(1, number(1, 8, True), "1..8",
                                        "in accompany mode, the bars the model finishes after the player stops "
                                        "(1: the bar it is in)", live=True, mqtt=("accompany-tail-bars",))


@dataclass(frozen=True)
class ModelSettings:
    weights: str = _setting("transformer", text, "transformer, lstm or a weights folder",
                            "weights: a shipped model or a folder", "--weights", live=True)
    device: str = _setting("auto", choice("auto", "cpu", "cuda"), "auto, cpu or cuda", "where inference runs")
    threads: int = _setting(1, number(1, 64, True), "1..64", "CPU threads for inference")
    # fp16/int8 read 2-4x fewer bytes per step for a measured, tiny NLL cost (bench/decode.py --nll).
    precision: str = _setting("auto", choice("auto", "fp32", "fp16", "int8"),
                              "auto (int8 with the native kernel, fp16 on an x86 CPU, else fp32), fp32, fp16 or int8 "
                              "(the last two on CPU only)",
                              "weights' precision in decode steps", "--precision")
    # native: the whole decode step as one C call, built here on first use (daemon/native.py).
    kernel: str = _setting("auto", choice("auto", "native", "torch"),
                           "auto (native where it builds: an x86-64 CPU with AVX2 and a C compiler), native or torch",
                           "the code that runs decode steps", "--kernel")


@dataclass(frozen=True)
class MqttSettings:
    host: str = _setting("", text, "a host name or empty (off)", "MQTT broker host", "--mqtt-host")
    port: int = _setting(1883, number(1, 65535, True), "1..65535", "MQTT broker port", "--mqtt-port")
    client_id: str = _setting("", text, "a string", "MQTT client id (empty: generated)")
    username: str = _setting("", text, "a string", "MQTT user name")
    # No flags: a command line is visible to every user (ps), and --mqtt-password would abbreviate the file's.
    password: str = _setting("", text, "a string", "MQTT password", flag=False)
    password_file: str = _setting("", text, "a file path or empty; relative: in $CREDENTIALS_DIRECTORY (systemd's "
                                  "LoadCredential=)", "file whose first line is the MQTT password", flag=False)
    tls_ca: str = _setting("", text, "a file path or empty", "CA certificate file (enables TLS)")
    tls_cert: str = _setting("", text, "a file path or empty", "client certificate file")
    tls_key: str = _setting("", text, "a file path or empty", "client key file")
    prefix: str = _setting("", topic_prefix, "a topic prefix (empty: antiphon/<hostname>)", "MQTT topic prefix",
                           "--mqtt-prefix")
    discovery_prefix: str = _setting("homeassistant", topic_prefix, "a topic prefix or empty (off: the documents are "
                                     "removed)", "Home Assistant MQTT discovery prefix")

    def __post_init__(self) -> None:
        if not self.prefix:
            object.__setattr__(self, "prefix", default_mqtt_prefix())


def mqtt_password(mqtt: MqttSettings) -> str:
    """The broker password: [mqtt] password, or the first line of password_file (never a flag, where
    `ps` would show it). A relative password_file is a systemd credential (LoadCredential=). Raises
    ConfigError naming the file and what is wrong."""
    if not mqtt.password_file:
        return mqtt.password
    if mqtt.password:
        raise ConfigError("[mqtt] password and password_file are both set; keep one")
    path = Path(mqtt.password_file).expanduser()
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and credentials:
        path = Path(credentials) / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"[mqtt] password_file {str(path)!r} cannot be read ({getattr(error, 'strerror', None) or error})"
                          ) from None
    if not lines or not lines[0]:
        raise ConfigError(f"[mqtt] password_file {str(path)!r} is empty")
    return lines[0]


@dataclass(frozen=True)
class TakesSettings:
    dir: str = _setting("auto", text, "auto ($STATE_DIRECTORY/takes under systemd, else ~/.local/share/antiphon/takes), "
                        "a folder, or empty (off)", "folder every take is written to as MIDI files", "--takes-dir")
    max_files: int = _setting(500, number(1, 100000, True), "1..100000", "takes kept; the oldest go first")
    max_mb: float = _setting(200.0, number(0.1, 100000), "0.1..100000", "megabytes of takes kept; the oldest go first")


@dataclass(frozen=True)
class LogSettings:
    level: str = _setting("info", choice("debug", "info", "warning", "error"), "debug, info, warning or error",
                          "log level")


SECTIONS: dict[str, type] = {
    "midi": MidiSettings,
    "tempo": TempoSettings,
    "jam": JamSettings,
    "model": ModelSettings,
    "mqtt": MqttSettings,
    "takes": TakesSettings,
    "log": LogSettings,
}
# The settings of every command that runs a model (run, generate, demo): the same flags, checks
# and help everywhere.
MODEL_AND_SAMPLING: frozenset[tuple[str, str]] = frozenset({
    ("model", "weights"), ("model", "device"), ("model", "precision"), ("model", "kernel"),
    ("jam", "temperature"), ("jam", "top_p"), ("jam", "seed"), ("tempo", "bpm"),
})
# TOML spells the ports "in"/"out" like the flags; "in" is a Python keyword, hence the renaming.
KEY_ALIASES = {("midi", "in"): "input", ("midi", "out"): "output", ("tempo", "mode"): "tempo_mode"}


@dataclass(frozen=True)
class ControlBinding:
    """[controls]: a controller that moves a live setting (within low..high) or fires an action."""

    target: str  # a live setting's name or one of CONTROL_ACTIONS
    cc: int
    low: float | None = None  # a setting's knob range; None for an action
    high: float | None = None


@dataclass(frozen=True)
class Preset:
    """[presets.NAME]: live settings applied together, {setting name: checked value}."""

    name: str
    values: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Settings:
    midi: MidiSettings = field(default_factory=MidiSettings)
    tempo: TempoSettings = field(default_factory=TempoSettings)
    jam: JamSettings = field(default_factory=JamSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    takes: TakesSettings = field(default_factory=TakesSettings)
    log: LogSettings = field(default_factory=LogSettings)
    controls: tuple[ControlBinding, ...] = ()
    presets: tuple[Preset, ...] = ()
    source: str = "defaults"

    @property
    def steps_per_bar(self) -> int:
        top, bottom = self.tempo.meter.split("/")
        return int(top) * 16 // int(bottom)


@dataclass(frozen=True)
class LiveSetting:
    """A setting declared live=True: changeable while the daemon runs."""

    section: str
    name: str
    type: type  # what MQTT parses a payload to: float, int or str
    aliases: tuple[str, ...]  # the other names MQTT accepts


def _live_settings() -> dict[str, LiveSetting]:
    types = {"float": float, "int": int, "str": str}
    return {
        spec.name: LiveSetting(section, spec.name, types[spec.type], spec.metadata["mqtt"])
        for section, cls in SECTIONS.items()
        for spec in fields(cls)
        if spec.metadata["live"]
    }


LIVE_SETTINGS: dict[str, LiveSetting] = _live_settings()
# What a controller can fire ([controls], MIDI learn) when it crosses the middle upwards.
CONTROL_ACTIONS = ("pause", "resume", "panic", "next-weights", "count-in")
# Tables of names (rather than of the fixed keys of a section) and the TOML tables they come from.
NAMED_TABLES = ("controls", "presets")
MIDDLE = 64  # an action fires when its controller crosses this upwards


def live_setting_named(name: str) -> LiveSetting | None:
    """A live setting by its name or one of its other (MQTT) names."""
    return LIVE_SETTINGS.get(name) or next((s for s in LIVE_SETTINGS.values() if name in s.aliases), None)


def setting_bounds(setting: LiveSetting) -> tuple[float, float] | None:
    """The allowed range of a numeric live setting (None for a text one: the weights)."""
    return getattr(_spec(setting.section, setting.name).metadata["check"], "bounds", None)


def setting_choices(setting: LiveSetting) -> tuple[str, ...] | None:
    """The words a live setting allows when it is a choice (None otherwise)."""
    return getattr(_spec(setting.section, setting.name).metadata["check"], "options", None)


def _spec(section: str, name: str) -> Any:
    return {f.name: f for f in fields(SECTIONS[section])}[name]


def _controller(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 127:
        raise ConfigError(f"{source}: [controls] {key} = {value!r} is not a controller number; allowed: 0..127")
    if value == MIDDLE:
        raise ConfigError(f"{source}: [controls] {key} = {value} is the sustain pedal's controller")
    return value


def controls_from(table: Any, source: str, handover_cc: int = -1) -> tuple[ControlBinding, ...]:
    """[controls]: `name = CC` or `name = {cc = CC, min = LOW, max = HIGH}`; name a knob-able live
    setting (a numeric one) or an action. One controller does one thing."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: controls must be a table [controls]")
    knobs = [name for name, s in LIVE_SETTINGS.items() if s.type is not str]
    bindings, owners = [], {}
    for key, value in table.items():
        setting = live_setting_named(key)
        if key not in CONTROL_ACTIONS and (setting is None or setting.type is str):
            raise ConfigError(f"{source}: [controls] {key} is neither a setting a knob can move ({', '.join(knobs)}) "
                              f"nor an action ({', '.join(CONTROL_ACTIONS)})")
        low = high = None
        if isinstance(value, dict):
            stray = sorted(set(value) - {"cc", "min", "max"})
            if stray or "cc" not in value:
                raise ConfigError(f"{source}: [controls] {key} = {value!r}: an inline table needs cc and may have "
                                  f"min and max (found {', '.join(stray) or 'no cc'})")
            if setting is None and ("min" in value or "max" in value):
                raise ConfigError(f"{source}: [controls] {key}: an action has no min or max")
            cc = _controller(source, key, value["cc"])
            if setting is not None:
                spec = _spec(setting.section, setting.name)
                low, high = setting_bounds(setting)
                low = _checked(f"{source}: [controls] {key} min", setting.section, spec, value.get("min", low))
                high = _checked(f"{source}: [controls] {key} max", setting.section, spec, value.get("max", high))
        else:
            cc = _controller(source, key, value)
            if setting is not None:
                low, high = setting_bounds(setting)
        if cc in owners:
            raise ConfigError(f"{source}: [controls] {key} and {owners[cc]} both use controller {cc}")
        if cc == handover_cc:
            raise ConfigError(f"{source}: [controls] {key} uses controller {cc}, the hand-over controller "
                              "([jam] handover_cc)")
        owners[cc] = key
        bindings.append(ControlBinding(setting.name if setting else key, cc, low, high))
    return tuple(bindings)


def presets_from(table: Any, source: str) -> tuple[Preset, ...]:
    """[presets.NAME] tables of live settings, in file order (program change N selects the N-th)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: presets must be tables [presets.NAME]")
    presets = []
    for name, values in table.items():
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"{source}: preset {name!r} must be a table [presets.{name}] of settings")
        checked = []
        for key, value in values.items():
            setting = live_setting_named(key)
            if setting is None:
                raise ConfigError(f"{source}: preset {name!r}: {key} is not a live setting; known: "
                                  f"{', '.join(LIVE_SETTINGS)}")
            spec = _spec(setting.section, setting.name)
            checked.append((setting.name, _checked(f"{source}: preset {name!r}", setting.section, spec, value)))
        presets.append(Preset(name, tuple(checked)))
    return tuple(presets)


def with_preset(settings: Settings, name: str) -> Settings:
    """The settings with a preset's values on top (--preset); ConfigError naming a missing preset."""
    preset = next((p for p in settings.presets if p.name == name), None)
    if preset is None:
        known = ", ".join(p.name for p in settings.presets) or "none in the config"
        raise ConfigError(f"{settings.source}: no preset {name!r}; known: {known}")
    for key, value in preset.values:
        settings = with_setting(settings, LIVE_SETTINGS[key].section, key, value)
    return settings


def toml_key(section: str, name: str) -> str:
    return {v: k for (s, k), v in KEY_ALIASES.items() if s == section}.get(name, name)


def flag_name(section: str, spec: Any) -> str:
    flag = spec.metadata["flag"]
    if flag:
        return flag
    prefix = "" if section in ("midi", "tempo", "jam", "model") else f"{section}-"
    return "--" + prefix + spec.name.replace("_", "-")


def default_config_path() -> Path:
    """$XDG_CONFIG_HOME/antiphon/config.toml (~/.config when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / APP_NAME / "config.toml"


def _checked(source: str, section: str, spec: Any, value: Any) -> Any:
    try:
        return spec.metadata["check"](value)
    except ValueError as error:
        raise ConfigError(
            f"{source}: [{section}] {toml_key(section, spec.name)} = {value!r} is {error}; "
            f"allowed: {spec.metadata['allowed']}"
        ) from None


def _from_flag(spec: Any, raw: str) -> Any:
    """A flag's text as the type its setting holds (a word stays a word for the check to judge)."""
    if spec.type == "str":  # a text setting keeps the flag as typed (e.g. --mqtt-prefix 2024)
        return raw
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def read_file(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None


def settings_from(document: dict, source: str, overrides: dict[tuple[str, str], Any] | None = None) -> Settings:
    """Settings from a parsed TOML document plus flag overrides {(section, name): raw text or value}."""
    overrides = overrides or {}
    known = {(section, f.name) for section, cls in SECTIONS.items() for f in fields(cls)}
    strays = sorted(set(overrides) - known)
    if strays:
        raise ConfigError(f"unknown setting {strays[0][0]}.{strays[0][1]}")
    unknown = sorted(set(document) - set(SECTIONS) - set(NAMED_TABLES))
    if unknown:
        raise ConfigError(f"{source}: unknown section [{unknown[0]}]; known: {', '.join([*SECTIONS, *NAMED_TABLES])}")
    built = {}
    for section, cls in SECTIONS.items():
        table = document.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section} must be a table [{section}]")
        specs = {toml_key(section, f.name): f for f in fields(cls)}
        stray = sorted(set(table) - set(specs))
        if stray:
            raise ConfigError(f"{source}: unknown key [{section}] {stray[0]}; known: {', '.join(specs)}")
        values = {}
        for key, spec in specs.items():
            if (section, spec.name) in overrides:
                raw = overrides[(section, spec.name)]
                value = _from_flag(spec, raw) if isinstance(raw, str) else raw
                values[spec.name] = _checked(flag_name(section, spec), section, spec, value)
            elif key in table:
                values[spec.name] = _checked(source, section, spec, table[key])
        built[section] = cls(**values)
    controls = controls_from(document.get("controls", {}), source, built["jam"].handover_cc)
    return Settings(**built, controls=controls, presets=presets_from(document.get("presets", {}), source), source=source)


def load_settings(path: str | os.PathLike | None, overrides: dict | None = None) -> Settings:
    """The file at `path` (or the default path when it exists, else defaults) with flags applied."""
    if path is None:
        candidate = default_config_path()
        if not candidate.exists():
            return settings_from({}, "defaults", overrides)
        path = candidate
    return settings_from(read_file(Path(path)), str(path), overrides)


def add_setting_flags(
    parser: argparse.ArgumentParser, only: frozenset[tuple[str, str]] | None = None, defaults: dict | None = None
) -> None:
    """One flag per setting (its value overrides the config file). A command that takes a few
    passes `only`, the (section, name) pairs, and its own `defaults` ({section: {key: value}},
    the document it gives settings_from) where they differ from the daemon's."""
    defaults = defaults or {}
    for section, cls in SECTIONS.items():
        specs = [spec for spec in fields(cls)
                 if (only is None or (section, spec.name) in only) and spec.metadata["flag"] is not False]
        if not specs:
            continue
        group = parser.add_argument_group(f"[{section}] settings")
        for spec in specs:
            dest = f"set:{section}:{spec.name}"
            flag = flag_name(section, spec)
            default = defaults.get(section, {}).get(toml_key(section, spec.name), spec.default)
            shown = f"; default {default}" if default != "" else ""
            help_text = f"{spec.metadata['help']} ({spec.metadata['allowed']}{shown})"
            if spec.metadata["check"] is boolean:
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                group.add_argument(flag, dest=dest, default=None, metavar=spec.name.upper(), help=help_text)


def overrides_from(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    """The settings given as flags, keyed (section, name)."""
    found = {}
    for dest, value in vars(args).items():
        if dest.startswith("set:") and value is not None:
            _, section, name = dest.split(":")
            found[(section, name)] = value
    return found


def with_setting(settings: Settings, section: str, name: str, value: Any) -> Settings:
    """A copy with one setting changed, checked like the file's; raises ConfigError."""
    spec = _spec(section, name)
    checked = _checked("setting", section, spec, value)
    return replace(settings, **{section: replace(getattr(settings, section), **{name: checked})})
