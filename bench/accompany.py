"""Accompaniment through real JACK ports: the reference test files' upper part played into the real
daemon (mode accompany), the model accompanying below middle C, against the file's own lower part
(the human reference) and a random grammar-valid stream in the same range (the floor).

    nice -n 19 python bench/accompany.py [--pieces 6] [--bars 8] [--weights transformer] [--range 21-59] \
        [--follow] [--offline] [--data FOLDER ...] [-- DAEMON FLAGS, e.g. --key auto]

Each piece: its notes split at middle C (60 and up: the upper part, played; below: the lower
part, the human reference); the first `--bars` bars from the upper part's first onset (beat one for the daemon);
a fresh daemon at the file's tempo (fixed mode), the upper part sent with uniform +-8 ms onset
jitter. Prints one JSON line per test folder (the first `--pieces` files of each whose excerpt has
4 or more upper notes), figures as mean and standard error over the pieces:
- pieces, bars_per_piece;
- model_notes_per_bar (model onsets while the player plays), late_notes (the daemon's count),
  rollbacks_per_bar, event_ms_p99 and redecide_ms_p99 (the largest of the daemon's per-stretch
  p99s: a player's note going in, and that plus deciding again to the lookahead),
  moved / revised (player's notes placed late, lengths put right at release), tail_bars_max (how
  far past the end of the player's last bar the model still sounded, in bars), unreleased
  (note-ons never ended);
- in_scale_rate (model notes in the key of the player's part, Krumhansl-Schmuckler,
  daemon/keys.py), on_beat_rate (onsets on a quarter note), and the same notes_per_bar /
  in_scale_rate / on_beat_rate for human_* and random_*.
Goal: zero late and zero unreleased; in_scale_rate >= human - 0.05 and well above random.

Also, from the model's onsets on the player's true grid (the file's tempo, the first onset as step
0): first_note_bars (the first one, in bars: the model may join and still rest), on_grid_rate
(within a quarter of a 16th of a 16th), and with --follow (the daemon in follow mode at 100 bpm,
never told the file's tempo: it reads the player's, joins, and follows) bpm_error_pct (the tempo
it read, against the file's); each as [mean, standard error, pieces].

With --offline the pieces are played into the `Accompanist` itself, with no clock and no ports,
sixteenth by sixteenth as bench/rollback.py does (the settings from the daemon flags after --):
the musical figures on many more pieces and bars in the time, nothing about timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import mido
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rollback import play  # noqa: E402
from daemon.accompanist import Accompanist, pitch_range_narrowing  # noqa: E402
from daemon.answer_loop import AnswerOptions, compose_mask  # noqa: E402
from daemon.cli import build_parser  # noqa: E402
from daemon.clock import step_seconds  # noqa: E402
from daemon.codec import Note, is_duration, token_value  # noqa: E402
from daemon.config import Settings, load_settings, overrides_from, parse_pitch_range  # noqa: E402
from daemon.engine import Engine  # noqa: E402
from daemon.jack_server import JackServer  # noqa: E402
from daemon.keys import find_key  # noqa: E402
from daemon.live_tokenizer import TokenStream  # noqa: E402
from daemon.paths import shipped_weights  # noqa: E402
from daemon.playing import Keyboard, notes_from  # noqa: E402
from daemon.sampling import make_generator, sample  # noqa: E402
from daemon.steering import accompaniment_options  # noqa: E402
from daemon.weights import load_weights  # noqa: E402
from training.midi_loading import load_midi, midi_files  # noqa: E402

ANTIPHON = Path(sys.executable).with_name("antiphon")
BAR = 16
MIDDLE_C = 60
JITTER_S = 0.008
FOLLOW_PRIOR_BPM = 100.0  # --follow: the daemon's setting (its default); the player plays at the file's tempo
REPORT = re.compile(r"accompaniment: (\d+) notes, (\d+) rollbacks \(event p99 (\S+) ms, re-decided p99 (\S+) ms\), "
                    r"(\d+) player's notes moved, (\d+) lengths revised, late notes so far: (\d+) played, (\d+) dropped")


def file_bpm(path: Path) -> float:
    for track in mido.MidiFile(path).tracks:
        for message in track:
            if message.type == "set_tempo":
                return round(mido.tempo2bpm(message.tempo), 2)
    return 120.0


def excerpt(notes: list[Note], bars: int) -> tuple[list[Note], list[Note]]:
    """(upper, lower) parts over `bars` bars from the upper part's first onset, which becomes step 0
    (the daemon takes the first onset as beat one, so its grid and the excerpt's coincide)."""
    upper = [n for n in notes if n.pitch >= MIDDLE_C]
    first = min(n.start for n in upper)
    window = range(first, first + bars * BAR)

    def part(chosen: list[Note]) -> list[Note]:
        return sorted(Note(n.start - first, n.pitch, min(n.duration, first + bars * BAR - n.start), 90)
                      for n in chosen if n.start in window)

    return part(upper), part([n for n in notes if n.pitch < MIDDLE_C])


def figures(notes: list[Note], key, bars: int) -> dict[str, float]:
    inside = [n for n in notes if 0 <= n.start < bars * BAR]
    if not inside:
        return {"notes_per_bar": 0.0, "in_scale_rate": float("nan"), "on_beat_rate": float("nan")}
    scale = key.scale
    return {"notes_per_bar": len(inside) / bars,
            "in_scale_rate": float(np.mean([scale[n.pitch % 12] for n in inside])),
            "on_beat_rate": float(np.mean([n.start % 4 == 0 for n in inside]))}


def random_stream(bars: int, pitch_range: tuple[int, int], seed: int) -> list[Note]:
    """Uniform choices among the tokens the accompanist's mask allows: a grammar-valid floor."""
    stream, rng = TokenStream(BAR, history=1 << 16), make_generator(seed)
    options = AnswerOptions(1.0, 1.0, 8, (pitch_range_narrowing(*pitch_range),))
    notes, end = [], bars * BAR
    while True:
        mask = compose_mask(stream.state, stream.last_bar, BAR, 0, end, options)
        token = sample(np.zeros(len(mask), dtype=np.float32), mask, 1.0, 1.0, rng)
        if token == 1 + BAR and stream.last_bar + BAR >= end:
            return notes
        stream.append([token])
        if is_duration(token):
            start, pitch = stream.last_note
            notes.append(Note(start, pitch, token_value(token)))
        if stream.last_bar >= end:
            return notes


def play_with_jitter(keyboard: Keyboard, notes: list[Note], bpm: float, origin: float, rng: random.Random) -> None:
    step = step_seconds(bpm)
    events = []
    for note in notes:
        on = note.start * step + rng.uniform(-JITTER_S, JITTER_S)
        events.append((max(on, 0.0), 1, mido.Message("note_on", note=note.pitch, velocity=90)))
        events.append(((note.start + note.duration) * step - 0.002, 0, mido.Message("note_off", note=note.pitch)))
    for offset, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        wait = origin + offset - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        keyboard.send(message)


def run_piece(path: Path, args: argparse.Namespace, number: int) -> dict | None:
    loaded = load_midi(path)
    upper, lower = excerpt(loaded.notes, args.bars)
    if len(upper) < 4:
        return None
    bpm = file_bpm(path)
    tempo = ["--tempo-mode", "follow", "--bpm", str(FOLLOW_PRIOR_BPM)] if args.follow else ["--bpm", str(bpm)]
    command = [str(ANTIPHON), "run", "--midi-api", "jack", "--virtual", "--client-name", f"antiphon-acc{number}",
               *tempo, "--seed", str(number), "--weights", args.weights, "--mode", "accompany",
               "--accompany-range", args.range, "--no-follow-clock", *args.daemon_flags]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in process.stderr), daemon=True).start()

    def wait_for(pattern: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in lines if pattern in line), None)
            if found:
                return found
            time.sleep(0.01)
        return None

    ready = wait_for("ready:", 120)
    if ready is None:
        print("\n".join(lines), file=sys.stderr)
        process.kill()
        return None
    ports = re.search(r"in=(\S+) out=(\S+?),", ready).groups()
    keyboard = Keyboard("jack", ports[0], ports[1], f"bench-kbd{number}")
    try:
        origin = time.monotonic() + 0.3
        play_with_jitter(keyboard, upper, bpm, origin, random.Random(number))
        wait_for("accompaniment:", 4 * BAR * step_seconds(bpm) + 10)
        time.sleep(BAR * step_seconds(bpm))
        process.terminate()
        process.wait(timeout=10)
        time.sleep(0.1)
        received = [(t, m) for t, m in keyboard.take() if m.type in ("note_on", "note_off")]
    finally:
        keyboard.close()
        if process.poll() is None:
            process.kill()
    reports = [REPORT.search(line).groups() for line in lines if REPORT.search(line)]
    for line in lines:
        if "moved" in line and "DEBUG" in line:
            print(line, file=sys.stderr)
    model = notes_from(received, origin, bpm)
    sounding: dict[int, int] = {}
    for _, m in received:
        sounding[m.note] = sounding.get(m.note, 0) + (1 if m.type == "note_on" and m.velocity else -1)
    for pitch in (pitch for pitch, count in sounding.items() if count > 0):  # what to look at, when it happens
        print(f"{path.name}: pitch {pitch} left sounding; its messages (s from the start): "
              + ", ".join(f"{t - origin:.3f} {m.type}" for t, m in received if m.note == pitch), file=sys.stderr)
        print("\n".join(line for line in lines if "accompaniment" in line), file=sys.stderr)
    player_end = max(n.start + n.duration for n in upper)
    bar_end = -(-player_end // BAR) * BAR
    last_sound = max((n.start + n.duration for n in model), default=0)
    key = find_key(upper)
    low, high = parse_pitch_range(args.range)
    # Where the model's onsets fall on the player's true grid, in 16ths from the first onset.
    positions = np.array([(t - origin) / step_seconds(bpm) for t, m in received if m.type == "note_on" and m.velocity])
    read = re.search(r"tempo (\S+) bpm read from the player", "\n".join(lines))
    return {
        "bars": args.bars,
        "first_note_bars": float(positions.min() / BAR) if positions.size else float("nan"),
        "on_grid_rate": float(np.mean(np.abs(positions - np.round(positions)) <= 0.25)) if positions.size else float("nan"),
        "bpm_error_pct": abs(float(read.group(1)) / bpm - 1) * 100 if read else float("nan"),
        "model": figures(model, key, args.bars),
        "human": figures(lower, key, args.bars),
        "random": figures(random_stream(args.bars, (low, high), number), key, args.bars),
        "late": (int(reports[-1][6]) + int(reports[-1][7])) if reports else 0,
        "rollbacks": sum(int(r[1]) for r in reports),
        "event_ms_p99": max((float(r[2]) for r in reports if r[2] != "None"), default=0.0),
        "redecide_ms_p99": max((float(r[3]) for r in reports if r[3] != "None"), default=0.0),
        "moved": sum(int(r[4]) for r in reports),
        "revised": sum(int(r[5]) for r in reports),
        "tail_bars": max(0.0, (last_sound - bar_end) / BAR),
        "unreleased": sum(count for count in sounding.values() if count > 0),
        "model_in_range": all(low <= n.pitch <= high for n in model),
    }


def offline_piece(path: Path, args: argparse.Namespace, number: int, engine: Engine, settings: Settings) -> dict | None:
    """One piece into the Accompanist directly (see the module's docstring)."""
    upper, lower = excerpt(load_midi(path).notes, args.bars)
    if len(upper) < 4:
        return None
    jam, (low, high) = settings.jam, parse_pitch_range(args.range)
    stream = TokenStream(BAR, history=1 << 16)
    engine.reset(list(stream.tokens))
    options, steering = accompaniment_options(jam, BAR, (low, high))
    accompanist = Accompanist(engine, stream, options, (low, high), make_generator(number), 80, steering)
    play(accompanist, upper, jam.accompany_lookahead_steps, args.bars * BAR + BAR)
    model = [p.note for p in accompanist.placed if not p.player]
    key = find_key(upper)
    return {"bars": args.bars, "model": figures(model, key, args.bars), "human": figures(lower, key, args.bars),
            "random": figures(random_stream(args.bars, (low, high), number), key, args.bars),
            "late": 0, "rollbacks": accompanist.stats.count, "event_ms_p99": 0.0, "redecide_ms_p99": 0.0,
            "moved": accompanist.stats.moved, "revised": accompanist.stats.revised, "tail_bars": 0.0,
            "unreleased": 0, "model_in_range": all(low <= n.pitch <= high for n in model)}


def summary(folder: Path, results: list[dict], args: argparse.Namespace) -> dict:
    bars = sum(r["bars"] for r in results)

    def mean(source: str, figure: str) -> list[float]:
        values = [r[source][figure] for r in results if not np.isnan(r[source][figure])]
        if not values:
            return [float("nan"), float("nan")]
        error = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        return [round(float(np.mean(values)), 3), round(float(error), 3)]

    line = {
        "data": folder.name if folder.name != "test" else folder.parent.name, "pieces": len(results),
        "bars_per_piece": args.bars, "weights": args.weights, "range": args.range, "daemon_flags": args.daemon_flags,
        "late_notes": sum(r["late"] for r in results),
        "unreleased": sum(r["unreleased"] for r in results),
        "all_in_range": all(r["model_in_range"] for r in results),
        "tail_bars_max": max((r["tail_bars"] for r in results), default=0.0),
        "rollbacks_per_bar": round(sum(r["rollbacks"] for r in results) / max(bars, 1), 3),
        "event_ms_p99": max((r["event_ms_p99"] for r in results), default=0.0),
        "redecide_ms_p99": max((r["redecide_ms_p99"] for r in results), default=0.0),
        "moved": sum(r["moved"] for r in results),
        "revised": sum(r["revised"] for r in results),
    }
    for figure in ("first_note_bars", "on_grid_rate", "bpm_error_pct"):
        values = [r[figure] for r in results if figure in r and not np.isnan(r[figure])]
        line[figure] = [round(float(np.mean(values)), 3) if values else None,
                        round(float(np.std(values, ddof=1) / np.sqrt(len(values))), 3) if len(values) > 1 else None,
                        len(values)]
    for source in ("model", "human", "random"):
        for figure in ("notes_per_bar", "in_scale_rate", "on_beat_rate"):
            line[f"{source}_{figure}"] = mean(source, figure)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+",
                        default=[ROOT.parent / "shared/data/reference/test", ROOT.parent / "shared/data/schubert/test"])
    parser.add_argument("--pieces", type=int, default=6, help="per folder")
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--weights", default="transformer")
    parser.add_argument("--range", default="21-59")
    parser.add_argument("--period", type=int, default=256, help="JACK period in frames at 48 kHz")
    parser.add_argument("daemon_flags", nargs="*", help="after --: more flags for the daemon, e.g. --key auto")
    parser.add_argument("--offline", action="store_true", help="into the Accompanist itself: no clock, no ports")
    parser.add_argument("--follow", action="store_true",
                        help=f"the daemon in follow mode at {FOLLOW_PRIOR_BPM:g} bpm, not told the file's tempo")
    args = parser.parse_args()
    if args.offline:
        settings = load_settings(None, overrides_from(build_parser().parse_args(["run", *args.daemon_flags])))
        engine = Engine(load_weights(shipped_weights(args.weights)).model, "cpu", precision="auto")
        run = lambda path, number: offline_piece(path, args, number, engine, settings)  # noqa: E731
        server = contextlib.nullcontext()
    else:
        run = lambda path, number: run_piece(path, args, number)  # noqa: E731
        server = JackServer(period=args.period, realtime=False)
    number = 0
    with server:
        for folder in args.data:
            results = []
            for path in midi_files(folder):
                if len(results) == args.pieces:
                    break
                number += 1
                result = run(path, number)
                if result is not None:
                    print(f"{path.name}: {json.dumps(result)}", file=sys.stderr)
                    results.append(result)
            print(json.dumps(summary(folder, results, args) | {"offline": args.offline, "follow": args.follow}),
                  flush=True)


if __name__ == "__main__":
    main()
