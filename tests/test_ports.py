"""MIDI ports: bounded hand-over to the loop, listing and matching by name."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import mido
import pytest
import rtmidi

from daemon.midi_input import INPUT_BUFFER, RTMIDI_QUEUE, InputBuffer, InputPoller
from daemon.port_release import release
from daemon.ports import MidiUnavailable, find_port, list_ports

ANTIPHON = Path(sys.executable).with_name("antiphon")


def test_a_flood_of_input_is_bounded_and_counted():
    async def scenario():
        loop = asyncio.get_running_loop()
        delivered = []
        buffer = InputBuffer(loop, lambda message, t: delivered.append((message, t)))
        for index in range(INPUT_BUFFER * 3):
            buffer.put(bytes([0x90, index % 128, 100]), float(index))
        assert len(buffer.items) == INPUT_BUFFER
        await asyncio.sleep(0.01)
        return buffer, delivered

    buffer, delivered = asyncio.run(scenario())
    assert buffer.dropped == INPUT_BUFFER * 2
    assert len(delivered) == INPUT_BUFFER
    assert delivered[-1][1] == float(INPUT_BUFFER * 3 - 1)  # the newest kept, with their arrival times
    assert isinstance(delivered[0][0], mido.Message)


class ScriptedInput:
    """RtMidi's get_message() over a script of (seconds from now, bytes): (bytes, delta) or None."""

    def __init__(self, script: list[tuple[float, bytes]]) -> None:
        start = time.monotonic()
        self.times = [start + at for at, _ in script]
        self.pending = deque(zip(self.times, (data for _, data in script)))
        self.previous: float | None = None
        self.reads: list[float] = []

    def get_message(self) -> tuple[list[int], float] | None:
        if not self.pending or self.pending[0][0] > time.monotonic():
            return None
        at, data = self.pending.popleft()
        delta = 0.0 if self.previous is None else at - self.previous
        self.previous = at
        self.reads.append(time.monotonic())
        return list(data), delta


def test_input_read_late_keeps_the_spacing_it_was_played_with():
    stamps: list[float] = []
    arrived = threading.Event()
    port = ScriptedInput([(0.05, b"\x90\x3c\x64"), (0.055, b"\x80\x3c\x00"), (0.060, b"\x90\x40\x64")])
    poller = InputPoller(lambda data, t: (stamps.append(t), arrived.set()), port)
    try:
        assert arrived.wait(1)
        with poller.lock:  # the reader stalls (as behind the GIL) while the next two arrive
            time.sleep(0.03)
        deadline = time.monotonic() + 1
        while len(stamps) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
    finally:
        poller.stop()
    assert len(stamps) == 3
    assert port.reads[2] - port.reads[0] > 0.02  # read together, long after the first
    assert stamps[1] - stamps[0] == pytest.approx(0.005, abs=1e-9)
    assert stamps[2] - stamps[0] == pytest.approx(0.010, abs=1e-9)
    assert all(stamp >= played for stamp, played in zip(stamps, port.times))  # never early


def test_find_port_matches_a_substring_case_insensitively_and_skips_our_own():
    names = ["antiphon:in 128:0", "Keystation 49:Keystation MIDI 1 20:0", "FLUID Synth (1234):Synth input port"]
    assert find_port(names, "keystation") == names[1]
    assert find_port(names, "fluid") == names[2]
    assert find_port(names, "antiphon", exclude={names[0]}) is None
    assert find_port(names, "missing") is None


@pytest.mark.skipif(os.path.exists("/dev/snd/seq"), reason="this machine has an ALSA sequencer")
def test_no_alsa_sequencer_is_a_clear_error():
    with pytest.raises(MidiUnavailable, match="ALSA sequencer is not available"):
        list_ports("alsa")
    result = subprocess.run([str(ANTIPHON), "ports"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no MIDI ports: the ALSA sequencer is not available" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.jack
def test_ports_lists_what_exists_on_jack(jack_server):
    synth = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, "listed-synth")
    synth.open_virtual_port("input")
    keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "listed-keys")
    keys.open_virtual_port("output")
    try:
        sources, destinations = list_ports("jack")
        assert "listed-keys:output" in sources and "listed-synth:input" in destinations
        result = subprocess.run([str(ANTIPHON), "ports", "--midi-api", "jack"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0
        listing = result.stdout.split("outputs")
        assert "listed-keys:output" in listing[0] and "listed-synth:input" in listing[1]
    finally:
        for port in (synth, keys):
            release(port)


@pytest.mark.jack
def test_sysex_and_active_sensing_stop_at_the_port_clock_goes_through(jack_server):
    from daemon.ports import MidiPorts

    async def scenario():
        loop = asyncio.get_running_loop()
        received: list[tuple[mido.Message, float]] = []
        events: list[dict] = []
        ports = MidiPorts("jack", "filter-test", "", "", lambda m, t: received.append((m, t)), events.append)
        ports.open(loop)
        keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "filter-keys")
        keys.open_port(keys.get_ports().index(ports.status()["in"]["name"]))
        await asyncio.sleep(0.2)
        sent = loop.time()
        for message in ([0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7], [0xFE], [0xF8], [0xFA], [0x90, 60, 100], [0x80, 60, 0]):
            keys.send_message(message)
        await asyncio.sleep(0.3)
        release(keys)
        ports.close()
        return received, sent

    received, sent = asyncio.run(scenario())
    assert [m.type for m, _ in received] == ["clock", "start", "note_on", "note_off"]
    assert all(t >= sent for _, t in received)  # stamped on arrival, on the loop's clock


@pytest.mark.jack
def test_a_burst_arrives_whole_and_in_order_while_another_thread_holds_the_gil(jack_server):
    # What an rtmidi callback got wrong: run in JACK's process thread, it waited for the GIL past
    # a period and events came lost or doubled.
    received: list[bytes] = []
    synth = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, "burst-synth", queue_size_limit=RTMIDI_QUEUE)
    synth.open_virtual_port("in")
    keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "burst-keys")
    keys.open_port(keys.get_ports().index("burst-synth:in"))
    poller = InputPoller(lambda data, t: received.append(data), synth)
    sent = [bytes([0x90 | (index // 128) % 16, index % 128, 1 + index % 127]) for index in range(600)]
    try:
        for message in sent:
            keys.send_message(list(message))
            busy = time.perf_counter() + 0.0003
            while time.perf_counter() < busy:  # pure Python: the GIL stays with this thread
                pass
        deadline = time.monotonic() + 5
        while len(received) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        poller.stop()
        for port in (keys, synth):
            release(port)
    assert received == sent
