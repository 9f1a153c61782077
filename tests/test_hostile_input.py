"""What a player, a patchbay, a broker or a weights folder can send must not break the daemon.

The real daemon process on a real JACK server (a JackPeer plays keyboard and synth) steered over
a real Mosquitto broker. Each case of issue 16: hostile MIDI events, a removed patchbay
connection, garbage MQTT payloads, broken weights folders, a crash with notes sounding, a SIGHUP
while starting; and a seeded fuzz of the MIDI input.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_process import (
    ANSWER_WAIT_S,
    DaemonProcess,
    JackPeer,
    Jam,
    daemon_sections,
    events,
    save_tiny_weights,
    sounding,
    start_jam,
    stop_jam,
    wait_online,
)
from fixtures_mqtt import Broker, MqttObserver
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from daemon.port_release import release
from daemon.weights import CONFIG_FILE, WEIGHTS_FILE

pytestmark = [pytest.mark.jack, pytest.mark.mqtt]

SUSTAIN, ALL_SOUND_OFF, ALL_NOTES_OFF = 64, 120, 123
SILENCE = [(SUSTAIN, 0), (ALL_NOTES_OFF, 0), (ALL_SOUND_OFF, 0)]  # on the output channel (1 -> 0)
GUARD_WAIT_S = 5.0  # the sysex guard probes every watch tick (0.5 s); generous on a loaded machine


@pytest.fixture(scope="module")
def jam(jack_server: object, mosquitto_module: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jam]:
    running = start_jam(tmp_path_factory.mktemp("hostile"), mosquitto_module)
    yield running
    stop_jam(running)


def answers(jam: Jam, tries: int = 4) -> None:
    """The player plays and the daemon answers with notes. A tiny random model may answer a
    phrase with silence now and then: the phrase is played again (a few times at most)."""
    for _ in range(tries):
        mark, played = jam.observer.mark(), time.monotonic()
        jam.peer.play_phrase([60, 64, 67, 72])
        jam.observer.wait_for(lambda mark=mark: events(jam.observer, "answer_finished", mark), "an answer",
                              ANSWER_WAIT_S)
        if any(m.type == "note_on" and m.velocity for m in jam.peer.messages(played)):
            return
    raise AssertionError(f"{tries} phrases, no answer note; log:\n{jam.daemon.log_text()[-3000:]}")


def no_traceback(jam: Jam) -> None:
    log = jam.daemon.log_text()
    assert "Traceback" not in log, log[-3000:]


def controls(messages) -> list[tuple[int, int]]:
    return [(m.control, m.value) for m in messages if m.type == "control_change"]


def jack_connections() -> dict[str, list[str]]:
    from daemon.jack_patchbay import parse_connections

    return parse_connections(subprocess.run(["jack_lsp", "-c"], capture_output=True, text=True, check=True).stdout)


# -- hostile MIDI ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "events_sent",
    [
        [[0xE0, 0x05]],  # a pitch bend with one data byte: IndexError in mido
        [[0x90, 0x3C]],  # a truncated note-on
        [[0x3C, 0x40], [0x40, 0x00]],  # running status: data bytes without a status
        [[0x90, 0x80, 0x80]],  # data bytes over 127
        [[0xF4], [0xF5, 0x01]],  # undefined system common
        [[0xF7]],  # a sysex end without its start
    ],
    ids=["truncated-bend", "truncated-note-on", "running-status", "data-over-127", "undefined-status", "lone-f7"],
)
def test_a_malformed_event_is_dropped_alone_and_counted(jam: Jam, events_sent: list[list[int]]) -> None:
    """The issue's E0 05 raised IndexError in the input drain: the note-on and note-off after it
    in the same batch were lost and a traceback per batch logged."""
    before = (jam.observer.state() or {}).get("input", {}).get("malformed", 0)
    mark = jam.observer.mark()
    for event in events_sent:
        jam.peer.keyboard.send_message(event)
    answers(jam)  # played at once, in the same batch as the garbage
    if events_sent != [[0xF7]]:
        jam.observer.wait_state(lambda s: s["input"]["malformed"] >= before + len(events_sent),
                                "the malformed count in the state", mark)
    no_traceback(jam)


def test_an_unterminated_sysex_is_ended_and_reported(jam: Jam) -> None:
    """One `F0 01 02` made RtMidi's JACK input swallow everything after it, for good."""
    mark = jam.observer.mark()
    jam.peer.keyboard.send_message([0xF0, 0x01, 0x02])
    reset = jam.observer.wait_for(lambda: events(jam.observer, "input_reset", mark), "input_reset", GUARD_WAIT_S)
    assert "sysex" in reset[0]["reason"] and reset[0]["name"] == jam.peer.keyboard_port
    answers(jam)
    assert "MIDI input" in jam.daemon.log_text() and "reset: an unterminated sysex" in jam.daemon.log_text()
    no_traceback(jam)


def test_a_connection_removed_in_the_patchbay_is_made_again(jam: Jam) -> None:
    ours = [port for port, linked in jack_connections().items()
            if jam.peer.keyboard_port in linked or jam.peer.synth_port in linked]
    assert len(ours) == 2, ours  # the daemon's input (from the keyboard) and output (to the synth)
    mark = jam.observer.mark()
    for port in ours:
        linked = jack_connections()[port]
        peer = jam.peer.keyboard_port if jam.peer.keyboard_port in linked else jam.peer.synth_port
        source, destination = (peer, port) if peer == jam.peer.keyboard_port else (port, peer)
        subprocess.run(["jack_disconnect", source, destination], check=True)
    restored = jam.observer.wait_for(
        lambda: len(found := events(jam.observer, "connection_restored", mark)) >= 2 and found,
        "both connections restored", GUARD_WAIT_S)
    assert {e["port"] for e in restored} == {"input", "output"}
    now = jack_connections()
    assert all(jam.peer.keyboard_port in now[p] or jam.peer.synth_port in now[p] for p in ours)
    state = jam.observer.state()
    assert state["ports"]["in"]["connected"] and state["ports"]["out"]["connected"]
    answers(jam)


# -- MQTT: garbage payloads ---------------------------------------------------------------
GARBAGE = [
    ("set/temperature", b"9" * 400),  # OverflowError
    ("set/answer_bars", b"9" * 400),
    ("set/bpm", b"-" + b"9" * 400),
    ("set/top_p", b"[" + b"9" * 400 + b"]"),
    ("set/answer_bars", b"1e308"),
    ("set/weights", b"w" * 300),  # a name over 255 characters: OSError
    ("set/weights", json.dumps("n" * 4000).encode()),  # a 4 KB JSON name
    ("set/weights", json.dumps("a\u0000b").encode()),  # a NUL byte
    ("set/weights", b"~no-such-user-here/weights"),  # expanduser: RuntimeError
    ("set/weights", b"/proc/self"),  # a folder, but no weights
    ("set/temperature", b'{"a":' * 800),
    ("set/temperature", b"\xef\xbb\xbf0.5\x00"),
    ("cmd/pause", b"\xff" * 4096),
]


@pytest.mark.parametrize("topic, payload", GARBAGE, ids=[f"{t}-{p[:12]!r}" for t, p in GARBAGE])
def test_every_garbage_payload_is_answered_and_the_bridge_stays(jam: Jam, topic: str, payload: bytes) -> None:
    mark = jam.observer.mark()
    jam.observer.publish(topic, payload)
    error = jam.observer.wait_for(lambda: jam.observer.latest("error", mark), f"an error for {topic}").json()
    assert error["topic"] == f"{jam.observer.prefix}/{topic}" and error["reason"]
    assert "internal error" not in error["reason"]
    # The bridge did not drop its connection: no new "online" (its first message after a connect).
    assert jam.observer.on("status", mark) == []
    no_traceback(jam)


def test_retained_commands_are_handled_once_not_on_every_reconnect(
    jack_server: object, mosquitto: Broker, tmp_path: Path
) -> None:
    """Retained, a payload that crashed the bridge came back on every reconnect, forever. Now a
    retained set/ is applied once, a retained cmd/ is not run, garbage is answered once."""
    peer = JackPeer()
    prefix = f"antiphon/retained-{tmp_path.name[-10:]}"
    sections = daemon_sections(peer, save_tiny_weights(tmp_path / "lstm"), mosquitto, prefix)
    sections["mqtt"]["client_id"] = client_id = f"antiphon-{tmp_path.name[-10:]}"
    observer = MqttObserver(mosquitto, prefix)
    daemon = None
    try:
        for topic, payload in (("set/temperature", "0.3"), ("set/bpm", "9" * 400), ("cmd/pause", "now")):
            observer.client.publish(f"{prefix}/{topic}", payload, qos=1, retain=True).wait_for_publish(timeout=5)
        daemon = DaemonProcess(tmp_path, sections).start().wait_ready()
        wait_online(observer)
        errors = observer.wait_for(lambda: len(found := observer.on("error")) >= 2 and found, "two errors")
        reasons = {e.json()["topic"]: e.json()["reason"] for e in errors}
        assert set(reasons) == {f"{prefix}/set/bpm", f"{prefix}/cmd/pause"}
        assert "retained action is not run" in reasons[f"{prefix}/cmd/pause"]
        observer.wait_state(lambda s: s["temperature"] == 0.3 and not s["paused"], "the retained temperature")
        observer.publish("set/temperature", "0.9")
        observer.wait_state(lambda s: s["temperature"] == 0.9, "temperature 0.9")
        # A client with the daemon's id takes its session over: the daemon connects again and
        # the broker replays every retained message to it.
        mark = observer.mark()
        kicker = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        kicker.connect(mosquitto.host, mosquitto.port)
        kicker.loop_start()
        observer.wait_for(lambda: kicker.is_connected(), "the kicker connected")
        kicker.disconnect()
        kicker.loop_stop()
        wait_online(observer, mark)
        observer.wait_for(lambda: observer.on("state", mark), "the state after the reconnect")
        time.sleep(1.0)  # the replayed messages came right after the subscription
        assert observer.state()["temperature"] == 0.9 and not observer.state()["paused"]
        assert observer.on("error", mark) == []
        assert len([m for m in observer.on("status") if m.payload == b"online"]) == 2  # no loop
        assert "Traceback" not in daemon.log_text()
    finally:
        for topic in ("set/temperature", "set/bpm", "cmd/pause"):
            observer.client.publish(f"{prefix}/{topic}", b"", qos=1, retain=True).wait_for_publish(timeout=5)
        observer.close()
        if daemon is not None:
            daemon.kill()
        peer.close()


# -- weights folders -----------------------------------------------------------------------
def _edit_model(change):
    def edit(folder: Path) -> None:
        document = json.loads((folder / CONFIG_FILE).read_text())
        change(document["model"])
        (folder / CONFIG_FILE).write_text(json.dumps(document))
    return edit


def _config_is_a_folder(folder: Path) -> None:
    (folder / CONFIG_FILE).unlink()
    (folder / CONFIG_FILE).mkdir()


def _tensors_as_integers(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / WEIGHTS_FILE))
    save_file({name: t.to(dtype=__import__("torch").int32) for name, t in tensors.items()}, str(folder / WEIGHTS_FILE))


def _unreadable(folder: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    folder.chmod(0)


BROKEN_WEIGHTS = {
    "config-is-a-folder": (_config_is_a_folder, "a folder, not a file"),
    "d_model-a-string": (_edit_model(lambda m: m.update(hidden_size="32")), "expected a whole number"),
    "num_layers-zero": (_edit_model(lambda m: m.update(num_layers=0)), "model.num_layers = 0"),
    "vocabulary-of-10": (_edit_model(lambda m: m.update(vocab_size=10)), "the codec has 153 tokens"),
    "oversized": (_edit_model(lambda m: m.update(hidden_size=8192, fc1=8192)), "the config needs"),
    "dropout-2": (_edit_model(lambda m: m.update(dropout=2)), "expected 0 <= value < 1"),
    "integer-tensors": (_tensors_as_integers, "expected floating point"),
    "no-tensors": (lambda f: (f / WEIGHTS_FILE).unlink(), "missing"),
    "unreadable": (_unreadable, "Permission denied"),
}


@pytest.mark.parametrize("case", list(BROKEN_WEIGHTS))
def test_a_broken_weights_folder_is_refused_in_one_line_and_the_old_weights_play_on(jam: Jam, case: str) -> None:
    break_it, reason = BROKEN_WEIGHTS[case]
    folder = jam.folder / f"broken-{case}"
    shutil.copytree(jam.folder / "lstm", folder)
    break_it(folder)
    try:
        mark = jam.observer.mark()
        jam.observer.publish("set/weights", str(folder))
        error = jam.observer.wait_for(lambda: jam.observer.latest("error", mark), f"an error for {case}").json()
    finally:
        folder.chmod(0o755)
    assert reason in error["reason"] and str(folder) in error["reason"] and "\n" not in error["reason"]
    assert jam.observer.on("state", mark) == [] and jam.observer.state()["weights"]["path"] == str(jam.folder / "lstm")
    no_traceback(jam)


def test_the_old_weights_answer_after_the_refusals(jam: Jam) -> None:
    answers(jam)
    assert jam.observer.state()["mode"] in ("listening", "answering")


# -- the fuzz ------------------------------------------------------------------------------
def fuzz_events(seed: int, count: int) -> list[list[int]]:
    """Random byte events, truncated channel messages, unterminated sysex, running status,
    realtime bytes and valid notes, mixed. (RtMidi sends no event over 3 bytes unless it starts
    with F0: the long ones are sysex starts with any bytes after them.)"""
    rng = random.Random(seed)
    made: list[list[int]] = []
    for _ in range(count):
        kind = rng.randrange(7)
        if kind == 0:
            made.append([rng.randrange(256) for _ in range(rng.randint(1, 3))])
        elif kind == 6:
            made.append([0xF0, *(rng.randrange(256) for _ in range(rng.randint(3, 12)))])
        elif kind == 1:
            made.append([rng.choice([0x80, 0x90, 0xA0, 0xB0, 0xE0]) | rng.randrange(16), rng.randrange(128)])
        elif kind == 2:
            made.append([0xF0, *(rng.randrange(128) for _ in range(rng.randint(0, 8)))])
        elif kind == 3:
            made.append([rng.randrange(128) for _ in range(rng.randint(1, 3))])
        elif kind == 4:
            made.append([rng.choice([0xF8, 0xFE, 0xF6, 0xF1, 0xF9, 0xFD])])
        else:
            made.append([0x90, rng.randrange(128), rng.randrange(128)])
    return made


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_midi_input_leaves_the_daemon_answering(jam: Jam, seed: int) -> None:
    sent = fuzz_events(seed, 400)
    for i, event in enumerate(sent):
        jam.peer.keyboard.send_message(event)
        if i % 20 == 0:
            time.sleep(0.01)
    for pitch in range(128):  # release whatever the fuzz left held
        jam.peer.keyboard.send_message([0x80, pitch, 0])
    time.sleep(2 * 0.5 + 0.5)  # the sysex guard ends any sysex the fuzz left open
    answers(jam)
    no_traceback(jam)
    assert jam.daemon.alive


# -- own daemons: start, crash, signals ---------------------------------------------------
@pytest.fixture
def peer(jack_server: object) -> Iterator[JackPeer]:
    made = JackPeer()
    yield made
    made.close()


def test_silence_first_on_start_and_after_a_crash(peer: JackPeer, mosquitto_module: Broker, tmp_path: Path) -> None:
    prefix = f"antiphon/crash-{tmp_path.name[-10:]}"
    sections = daemon_sections(peer, save_tiny_weights(tmp_path / "lstm"), mosquitto_module, prefix)
    sections["jam"]["answer_bars"] = 4
    sections["jam"]["max_note_steps"] = 32
    first = DaemonProcess(tmp_path, sections).start().wait_ready()
    try:
        deadline = time.monotonic() + 5  # "ready:" is logged as the silence leaves: JACK delivers it next
        while len(peer.messages()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        heard = peer.messages()
        assert controls(heard[:3]) == SILENCE and all(m.channel == 0 for m in heard[:3])
        for _ in range(4):  # a tiny random model may answer with silence: play again
            peer.play_phrase([60, 64, 67, 72])
            deadline = time.monotonic() + 8
            while not sounding(peer.messages()) and time.monotonic() < deadline:
                time.sleep(0.005)
            if sounding(peer.messages()):
                break
        first.process.kill()  # SIGKILL mid-answer: the note-offs never come
        first.wait(10)
        # As systemd's RestartSec would: the restart once JACK has dropped the dead client and its
        # graph runs again (jackd 1.9.21's dummy driver, not realtime, on a loaded machine took
        # seconds, and once left the synth stalled until another client connected to it).
        client = sections["midi"]["client_name"]
        deadline = time.monotonic() + 20
        while any(port.startswith(client) for port in jack_connections()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not jack_graph_runs(timeout=20):
            pytest.skip("jackd's graph stayed stalled after the SIGKILL (a JACK client of our own got no MIDI through)")
        assert sounding(peer.messages()), "precondition: the crash left a note sounding"
        crashed = len(peer.messages())
        second = DaemonProcess(tmp_path, sections).start().wait_ready()
        deadline = time.monotonic() + 20
        while sounding(peer.messages()) and time.monotonic() < deadline:
            time.sleep(0.05)
        after = peer.messages()[crashed:]
        assert sounding(peer.messages()) == set(), f"after the restart: {after}\n{second.log_text()[-3000:]}"
        assert controls(after[:3]) == SILENCE
        assert second.alive
        second.signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        first.kill()
        if "second" in locals():
            second.kill()


def jack_graph_runs(timeout: float) -> bool:
    """A loopback pair of our own gets a message through the JACK server within `timeout`."""
    import rtmidi

    name = f"graph-{uuid.uuid4().hex[:6]}"
    sender, receiver = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, f"{name}-out"), rtmidi.MidiIn(rtmidi.API_UNIX_JACK, f"{name}-in")
    try:
        sender.open_virtual_port("out")
        receiver.open_virtual_port("in")
        subprocess.run(["jack_connect", f"{name}-out:out", f"{name}-in:in"], check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sender.send_message([0x90, 60, 1])
            time.sleep(0.1)
            if receiver.get_message() is not None:
                return True
        return False
    finally:
        for port in (sender, receiver):
            release(port)


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _catches(pid: int, sig: signal.Signals) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (sig - 1)))


def test_a_sighup_while_starting_does_not_end_the_daemon(peer: JackPeer, mosquitto_module: Broker,
                                                         tmp_path: Path) -> None:
    """The handler was installed after torch and the weights had loaded (~0.5 s and more)."""
    prefix = f"antiphon/hup-{tmp_path.name[-10:]}"
    sections = daemon_sections(peer, save_tiny_weights(tmp_path / "lstm"), mosquitto_module, prefix)
    daemon = DaemonProcess(tmp_path, sections).start()
    try:
        pid = daemon.process.pid
        deadline = time.monotonic() + 60
        while not _loaded(pid, "libtorch"):  # torch is being imported: seconds before the loop runs
            assert daemon.alive and time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.001)
        assert _catches(pid, signal.SIGHUP), "SIGHUP is not handled while torch loads"
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready()
        daemon.wait_for_log("config reloaded")
        observer = MqttObserver(mosquitto_module, prefix)
        try:
            wait_online(observer)
            answers(Jam(daemon, peer, observer, tmp_path))
        finally:
            observer.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        daemon.kill()
