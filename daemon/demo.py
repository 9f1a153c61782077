"""`antiphon demo`: the whole jam pipeline with no MIDI hardware.

The built-in phrase (daemon/data/phrase.mid, two bars) plays as the keyboard in real time into
the daemon's input port; the daemon answers on its output port; the exchange is written to a
MIDI file (call and answer on separate tracks) and a piano roll (call grey, answer blue).

Transport, in order of preference: the MIDI system that is there (ALSA sequencer, or a running
JACK server), else a private JACK dummy server when jackd is installed, else an in-process port
pair. The demo says which it used.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import mido

from daemon.config import Settings
from daemon.jack_server import JackServer, jack_running, jackd_path
from daemon.loopback import LoopbackPorts
from daemon.midifile import read_midi, write_midi
from daemon.pianoroll import write_piano_roll
from daemon.playing import Keyboard, notes_from, phrase_events, play

PHRASE = Path(__file__).resolve().parent / "data" / "phrase.mid"
START_DELAY_S = 0.3  # between the daemon being ready and the phrase's first note
ANSWER_TIMEOUT_S = 30.0


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
