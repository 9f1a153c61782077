"""One TOML file with every setting, each also a flag; bad values rejected with key, value and what is allowed."""

from __future__ import annotations

import argparse
import socket
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.cli import build_parser, main
from daemon.config import (
    SECTIONS,
    ConfigError,
    default_config_path,
    flag_name,
    load_settings,
    overrides_from,
    settings_from,
    toml_key,
    with_setting,
)


def parse_run(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def test_defaults_without_a_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    settings = load_settings(None)
    assert settings.source == "defaults"
    assert settings.midi.api == "alsa" and settings.tempo.meter == "4/4" and settings.steps_per_bar == 16
    assert settings.model.weights == "transformer"
    assert settings.mqtt.prefix == f"antiphon/{socket.gethostname()}"


def test_default_path_is_in_the_users_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_path() == tmp_path / "antiphon" / "config.toml"
    default_config_path().parent.mkdir()
    default_config_path().write_text("[tempo]\nbpm = 150\n")
    settings = load_settings(None)
    assert settings.tempo.bpm == 150.0 and settings.source == str(default_config_path())


def test_file_then_flags(tmp_path):
    path = tmp_path / "antiphon.toml"
    path.write_text(
        '[midi]\napi = "jack"\nin = "Keystation"\n\n[tempo]\nbpm = 90\nmeter = "3/4"\n\n'
        '[jam]\ntemperature = 0.8\nvelocity = 100\n\n[mqtt]\nhost = "127.0.0.1"\nprefix = "studio/jam"\n'
    )
    args = parse_run("--config", str(path), "--bpm", "140", "--out", "Synth", "--virtual", "--seed", "7")
    settings = load_settings(args.config, overrides_from(args))
    assert settings.midi.api == "jack" and settings.midi.input == "Keystation" and settings.midi.output == "Synth"
    assert settings.midi.virtual is True
    assert settings.tempo.bpm == 140.0 and settings.steps_per_bar == 12
    assert settings.jam.temperature == 0.8 and settings.jam.velocity == 100 and settings.jam.seed == 7
    assert settings.mqtt.host == "127.0.0.1" and settings.mqtt.prefix == "studio/jam"


def test_every_setting_has_a_flag():
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("run"))
    flags = {option for action in run._actions for option in action.option_strings}
    for section, cls in SECTIONS.items():
        for spec in fields(cls):
            assert (flag_name(section, spec) in flags) == (spec.metadata["flag"] is not False)
    for required in ("--midi-api", "--virtual", "--in", "--out", "--bpm", "--weights", "--config", "--seed",
                     "--mqtt-host", "--mqtt-port", "--mqtt-prefix"):
        assert required in flags


@pytest.mark.parametrize(
    "document, words",
    [
        ({"jam": {"temperature": -1}}, ["[jam] temperature", "-1", "0..5"]),
        ({"tempo": {"bpm": "fast"}}, ["[tempo] bpm", "'fast'", "20..400"]),
        ({"tempo": {"meter": "4/5"}}, ["[tempo] meter", "'4/5'", "n/d"]),
        ({"tempo": {"meter": "9/4"}}, ["[tempo] meter", "'9/4'", "31 sixteenths"]),
        ({"midi": {"api": "coreaudio"}}, ["[midi] api", "'coreaudio'", "alsa or jack"]),
        ({"midi": {"in": 3}}, ["[midi] in", "3", "port name"]),
        ({"jam": {"late_policy": "maybe"}}, ["[jam] late_policy", "'maybe'", "play or drop"]),
        ({"jam": {"velocity": 200}}, ["[jam] velocity", "200", "\"follow\" or 1..127"]),
        ({"mqtt": {"port": 70000}}, ["[mqtt] port", "70000", "1..65535"]),
        ({"jam": {"answer_bars": 2.5}}, ["[jam] answer_bars", "2.5", "0 (as long as the call)"]),
        ({"model": {"precision": "fp64"}}, ["[model] precision", "'fp64'", "fp32, fp16 or int8"]),
        ({"model": {"kernel": "cuda"}}, ["[model] kernel", "'cuda'", "native or torch"]),
    ],
)
def test_invalid_values_name_key_value_and_allowed(document, words):
    with pytest.raises(ConfigError) as caught:
        settings_from(document, "my.toml")
    message = str(caught.value)
    assert message.startswith("my.toml: ")
    for word in words:
        assert word in message


def test_unknown_keys_and_sections_are_rejected():
    with pytest.raises(ConfigError, match=r"unknown key \[jam\] temprature; known: .*temperature"):
        settings_from({"jam": {"temprature": 1.0}}, "my.toml")
    with pytest.raises(ConfigError, match=r"unknown section \[synth\]"):
        settings_from({"synth": {}}, "my.toml")


def test_bad_flag_names_the_flag(capsys):
    assert main(["run", "--top-p", "2", "--config", "/nonexistent/antiphon.toml"]) == 2
    assert "no such config file" in capsys.readouterr().err
    args = parse_run("--top-p", "2")
    with pytest.raises(ConfigError, match=r"--top-p: \[jam\] top_p = 2 is out of range; allowed: 0.01..1"):
        settings_from({}, "defaults", overrides_from(args))


def test_broken_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[jam\ntemperature = 1\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        load_settings(path)


def test_with_setting_checks_like_the_file():
    settings = settings_from({}, "defaults")
    assert with_setting(settings, "jam", "temperature", 0.5).jam.temperature == 0.5
    with pytest.raises(ConfigError, match="temperature"):
        with_setting(settings, "jam", "temperature", 9)
    assert toml_key("midi", "input") == "in"


def test_live_settings_and_their_mqtt_names_come_from_the_declarations():
    from daemon.config import LIVE_SETTINGS
    from daemon.mqtt import SETTING_ALIASES, SETTINGS

    declared = {(section, spec.name) for section, cls in SECTIONS.items() for spec in fields(cls) if spec.metadata["live"]}
    assert {(s.section, name) for name, s in LIVE_SETTINGS.items()} == declared == {
        ("jam", "temperature"), ("jam", "top_p"), ("tempo", "bpm"), ("tempo", "tempo_mode"), ("tempo", "click"),
        ("jam", "answer_bars"), ("model", "weights"), ("jam", "key"), ("jam", "register"), ("jam", "clashes"),
        ("jam", "mode"), ("jam", "accompany_range"), ("jam", "accompany_tail_bars")}
    assert SETTINGS == {"temperature": float, "top_p": float, "bpm": float, "tempo_mode": str, "click": str,
                        "answer_bars": int, "weights": str, "key": str, "register": str, "clashes": str,
                        "mode": str, "accompany_range": str, "accompany_tail_bars": int}
    assert SETTING_ALIASES == {"top-p": "top_p", "tempo": "bpm", "tempo-mode": "tempo_mode", "answer_length": "answer_bars",
                               "answer-length": "answer_bars", "accompany-range": "accompany_range",
                               "accompany-tail-bars": "accompany_tail_bars"}


def test_click_is_off_unless_set_in_the_file_or_by_its_flag():
    assert settings_from({}, "test").tempo.click == "off"
    assert settings_from({"tempo": {"click": "always"}}, "test").tempo.click == "always"
    assert settings_from({}, "flags", {("tempo", "click"): "count-in"}).tempo.click == "count-in"
    with pytest.raises(ConfigError, match=r"\[tempo\] click = 'loud'.*off, count-in or always"):
        settings_from({"tempo": {"click": "loud"}}, "test")


def test_the_tempo_mode_is_the_tempo_tables_mode_key():
    assert settings_from({"tempo": {"mode": "follow"}}, "test").tempo.tempo_mode == "follow"
    with pytest.raises(ConfigError, match=r"tempo.*mode.*fixed or follow"):
        settings_from({"tempo": {"mode": "chase"}}, "test")


JSON_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.integers(min_value=2**63, max_value=10**400),
    st.booleans(), st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
)


@given(value=JSON_VALUES, name=st.sampled_from(["temperature", "answer_bars", "bpm"]))
def test_mqtt_accepts_a_number_exactly_when_the_setting_would(value, name):
    """MQTT parses a payload with the config's own number check; the range is then the app's."""
    import json

    from daemon.config import LIVE_SETTINGS
    from daemon.mqtt import CommandError, parse_setting

    section = LIVE_SETTINGS[name].section
    settings = settings_from({}, "defaults")
    payload = json.dumps(value)
    try:
        direct = getattr(with_setting(settings, section, name, value), section)
    except ConfigError:
        direct = None
    try:
        parsed = parse_setting(name, payload)
    except CommandError:
        assert direct is None
        return
    if isinstance(value, str):  # a JSON string: its text is read as a number, as a plain payload is
        return
    try:
        via_mqtt = getattr(with_setting(settings, section, name, parsed), section)
    except ConfigError:  # out of range: the app's answer
        via_mqtt = None
    assert via_mqtt == direct


def test_a_number_past_every_float_is_out_of_range_not_a_crash():
    settings = settings_from({}, "defaults")
    for name, section in (("temperature", "jam"), ("answer_bars", "jam")):
        with pytest.raises(ConfigError, match="out of range"):
            with_setting(settings, section, name, 10**400)


def test_the_mqtt_password_is_never_a_flag() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--mqtt-password", "secret"])


def test_mqtt_password_file_absolute_and_as_a_systemd_credential(tmp_path: Path, monkeypatch) -> None:
    from daemon.config import MqttSettings, mqtt_password

    (tmp_path / "secret").write_text("hunter2\nignored\n")
    assert mqtt_password(MqttSettings(password_file=str(tmp_path / "secret"))) == "hunter2"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert mqtt_password(MqttSettings(password_file="secret")) == "hunter2"
    assert mqtt_password(MqttSettings(password="inline")) == "inline"


@pytest.mark.parametrize("content, reason", [(None, "cannot be read"), ("", "is empty"), ("\nx", "is empty")])
def test_a_bad_mqtt_password_file_is_a_configuration_error(tmp_path: Path, content: str | None, reason: str) -> None:
    from daemon.config import MqttSettings, mqtt_password

    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"password_file '{path}' {reason}"):
        mqtt_password(MqttSettings(password_file=str(path)))
    config = tmp_path / "config.toml"
    config.write_text(f'[mqtt]\nhost = "127.0.0.1"\npassword_file = "{path}"\n')
    assert main(["run", "--config", str(config)]) == 2  # systemd's RestartPreventExitStatus=2


def test_the_answer_key_is_auto_off_or_a_key():
    settings = settings_from({"jam": {"key": "F# minor"}}, "test")
    assert settings.jam.key == "F# minor"
    assert with_setting(settings, "jam", "key", "auto").jam.key == "auto"
    with pytest.raises(ConfigError, match=r"\[jam\] key = 'H#m' is not a key; allowed: auto"):
        with_setting(settings, "jam", "key", "H#m")
    with pytest.raises(ConfigError, match="density = 'lots' is not a number"):
        settings_from({"jam": {"density": "lots"}}, "test")


def test_help_shows_each_settings_default():
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("run", "generate", "demo"):
        flags = [a for a in subparsers.choices[command]._actions if a.dest.startswith("set:")]
        assert flags, command
        for action in flags:
            _, section, name = action.dest.split(":")
            default = {f.name: f.default for f in fields(SECTIONS[section])}[name]
            if default != "":  # an empty default (no port named, no password) has nothing to show
                assert "default " in action.help, (command, action.option_strings)
    bpm = next(a for a in subparsers.choices["run"]._actions if a.dest == "set:tempo:bpm")
    assert "default 100.0" in bpm.help
