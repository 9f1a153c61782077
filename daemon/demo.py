"""`antiphon demo`: the whole jam pipeline with no MIDI hardware.

The built-in phrase (daemon/data/phrase.mid, two bars) plays as the keyboard in real time into
the daemon's input port; the daemon answers on its output port; the exchange is written to a
MIDI file (call and answer on separate tracks) and a piano roll (call grey, answer blue).

Transport, in order of preference: the MIDI system that is there (ALSA sequencer, or a running
JACK server), else a private JACK dummy server when jackd is installed, else an in-process port
pair. The demo says which it used.

`Keyboard` (the player's side over real ports) is shared with the integration tests and the
latency benchmark.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import mido
import rtmidi

from daemon.clock import step_seconds
from daemon.codec import Note
from daemon.config import Settings
from daemon.jack_server import JackServer, jack_running, jackd_path
from daemon.midifile import read_midi, write_midi
from daemon.pianoroll import write_piano_roll
from daemon.ports import APIS, RTMIDI_QUEUE, InputPoller, LoopbackPorts, find_port

PHRASE = Path(__file__).resolve().parent / "data" / "phrase.mid"
START_DELAY_S = 0.3  # between the daemon being ready and the phrase's first note
ANSWER_TIMEOUT_S = 30.0


class Keyboard:
    """A MIDI client that plays into one port and records what another sends, with arrival times."""

    def __init__(self, api: str, to_port: str, from_port: str, client_name: str = "keyboard") -> None:
        self.api = api
        self.client_name = client_name
        self.received: list[tuple[float, mido.Message]] = []
        self._lock = threading.Lock()
        self._out = rtmidi.MidiOut(APIS[api], client_name)
        self._in = rtmidi.MidiIn(APIS[api], client_name, queue_size_limit=RTMIDI_QUEUE)
        self._in.ignore_types(sysex=True, timing=True, active_sense=True)
        self.to_port = to_port
        self.from_port = from_port
        self.connect_out()
        self.connect_in()
        self._poller = InputPoller(self._arrived, self._in)

    def connect_out(self) -> None:
        self._out.open_port(self._index(self._out.get_ports(), self.to_port), "out")

    def connect_in(self) -> None:
        self._in.open_port(self._index(self._in.get_ports(), self.from_port), "in")

    def unplug_out(self) -> None:
        """The keyboard's cable pulled: its output port disappears from the port list."""
        self._out.close_port()
        self._out.delete()

    def replug_out(self, port_name: str) -> None:
        """Plugged back in: a fresh client with a port of the same name, connected nowhere."""
        self._out = rtmidi.MidiOut(APIS[self.api], self.client_name)
        self._out.open_virtual_port(port_name)

    def _index(self, names: list[str], wanted: str) -> int:
        match = find_port(names, wanted)
        if match is None:
            raise RuntimeError(f"no MIDI port matching {wanted!r} among {names}")
        return names.index(match)

    def _arrived(self, data: bytes, arrived: float) -> None:
        try:
            message = mido.Message.from_bytes(data)
        except ValueError:
            return
        with self._lock:
            self.received.append((arrived, message))

    def send(self, message: mido.Message) -> float:
        sent = time.monotonic()
        self._out.send_message(message.bytes())
        return sent

    def take(self) -> list[tuple[float, mido.Message]]:
        with self._lock:
            received, self.received = self.received, []
        return received

    def close(self) -> None:
        self._poller.stop()
        for port in (self._in, self._out):
            try:
                port.close_port()
                port.delete()
            except Exception:  # already deleted by unplug_out
                pass


def phrase_events(notes: list[Note], bpm: float, channel: int = 0) -> list[tuple[float, mido.Message]]:
    """(seconds from the first onset, message) for grid notes played at `bpm`; offs before ons."""
    step = step_seconds(bpm)
    events = []
    for note in notes:
        events.append((note.start * step, 1, mido.Message("note_on", channel=channel, note=note.pitch,
                                                           velocity=note.velocity)))
        events.append(((note.start + note.duration) * step, 0, mido.Message("note_off", channel=channel,
                                                                             note=note.pitch)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [(t, message) for t, _, message in events]


async def play(events: list[tuple[float, mido.Message]], send, start: float) -> None:
    """Send each message at start + its offset, on the loop's clock."""
    loop = asyncio.get_running_loop()
    for offset, message in events:
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        send(message)


def notes_from(received: list[tuple[float, mido.Message]], origin: float, bpm: float) -> list[Note]:
    """Recorded messages back to grid notes (steps from `origin`)."""
    step = step_seconds(bpm)
    sounding: dict[int, list[tuple[float, int]]] = {}
    notes = []
    for t, message in received:
        if message.type == "note_on" and message.velocity > 0:
            sounding.setdefault(message.note, []).append((t, message.velocity))
        elif message.type in ("note_on", "note_off") and sounding.get(message.note):
            on, velocity = sounding[message.note].pop(0)
            start = round((on - origin) / step)
            notes.append(Note(start, message.note, max(1, round((t - origin) / step) - start), velocity))
    return sorted(notes)


def choose_transport(requested: str) -> str:
    """'alsa', 'jack' (a running server), 'private-jack' or 'in-process'."""
    if requested == "in-process":
        return "in-process"
    if requested == "auto" and os.path.exists("/dev/snd/seq"):
        return "alsa"
    if jack_running():
        return "jack"
    if jackd_path() is not None:
        return "private-jack"
    if requested == "jack":
        raise RuntimeError("no JACK server running and jackd is not installed")
    return "in-process"


TRANSPORT_WORDS = {
    "alsa": "the ALSA sequencer (virtual ports)",
    "jack": "the running JACK server (virtual ports)",
    "private-jack": "a private JACK dummy server started for the demo (no MIDI system was running)",
    "in-process": "an in-process port pair (no MIDI system and no jackd)",
}


def run_demo(out_dir: str, settings: Settings, requested: str) -> int:
    """The demo with these settings (its ports and MIDI system are the demo's own choice)."""
    from daemon.app import StartupError

    try:
        transport = choose_transport(requested)
    except RuntimeError as error:
        print(f"demo: {error}")
        return 1
    print(f"demo: transport: {TRANSPORT_WORDS[transport]}")
    server = JackServer() if transport == "private-jack" else nullcontext()
    try:
        with server:
            return asyncio.run(_duet(Path(out_dir), settings, transport))
    except StartupError as error:
        print(f"demo: {error}")
        return 1


async def _duet(out_dir: Path, settings: Settings, transport: str) -> int:
    from daemon.app import JamApp

    call, bars = read_midi(PHRASE)
    api = "alsa" if transport == "alsa" else "jack"
    settings = replace(settings, midi=replace(settings.midi, api=api, virtual=True, client_name="antiphon-demo"))
    bpm = settings.tempo.bpm
    recorded: list[tuple[float, mido.Message]] = []
    def loopback(receive, on_event) -> LoopbackPorts:
        return LoopbackPorts(receive, on_event, on_output=lambda m, t: recorded.append((t, m)))

    app = JamApp(settings, ports_factory=loopback if transport == "in-process" else None)
    finished = asyncio.Event()
    results: dict = {}

    def listen(event: dict) -> None:
        # An answer the phrase itself interrupted (a barge-in) is not the demo's answer.
        if event["type"] == "answer_finished" and not event["barged_in"]:
            results.update(event)
            finished.set()

    app.add_listener(listen)
    running = asyncio.create_task(app.run())
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait([running, ready], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        return running.result()
    keyboard = None
    if transport == "in-process":
        send = app.ports.play
    else:
        status = app.ports.status()
        keyboard = Keyboard(api, status["in"]["name"], status["out"]["name"], "demo-keyboard")
        send = keyboard.send
    loop = asyncio.get_running_loop()
    origin = loop.time() + START_DELAY_S
    print(f"demo: playing the call ({len(call)} notes, 2 bars at {bpm:g} bpm); the model answers")
    try:
        await play(phrase_events(call, bpm), send, origin)
        await asyncio.wait_for(finished.wait(), ANSWER_TIMEOUT_S)
    except TimeoutError:
        print("demo: no answer came")
    finally:
        await asyncio.sleep(0.05)
        app.stop()
        await running
        if keyboard is not None:
            recorded = keyboard.take()
            keyboard.close()
    answer = notes_from(recorded, origin, bpm)
    out_dir.mkdir(parents=True, exist_ok=True)
    midi_path, png_path = out_dir / "demo.mid", out_dir / "demo.png"
    write_midi(midi_path, [("call", call), ("answer", answer)], bpm=bpm)
    end = max((n.start + n.duration for n in (*call, *answer)), default=0)
    write_piano_roll(png_path, [(call, "grey"), (answer, "blue")], range(0, end + 1, 16))
    latency = results.get("latency_ms")
    print(f"demo: answer of {len(answer)} notes over {results.get('bars', '?')} bars; first note "
          f"{f'{latency:.1f} ms from its grid time' if latency is not None else 'none'}; "
          f"{results.get('tokens_per_s', 0):.0f} tokens/s")
    print(f"demo: wrote {midi_path} (tracks: call, answer) and {png_path} (call grey, answer blue)")
    return 0 if finished.is_set() else 1
