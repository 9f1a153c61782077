"""Call-and-response timing of the real daemon through real JACK ports.

Starts a private JACK dummy server and `antiphon run --midi-api jack --virtual`, then plays
one-bar calls into it and records its answers, exchange after exchange. Measured at the keyboard
side (so JACK's transport both ways is included), against the grid the call defines:
- added response latency: the first answer note-on minus the grid time it falls on;
- timing jitter: every answer note-on's error around that exchange's median error;
- the real-time factor: tokens generated per second of inference time (the daemon's count)
  over tokens consumed per second of music.
Prints a table and, last, one JSON line.

    python bench/jam_latency.py [--exchanges 100] [--bpm 240] [--weights transformer] [--period 64]
                                [--kernel auto|native|torch] [--precision auto|fp32|fp16|int8]

JACK runs in realtime mode, as musicians run it (--no-realtime-jack to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from daemon.clock import step_seconds
from daemon.codec import Note
from daemon.jack_server import JackServer
from daemon.playing import Keyboard, phrase_events

ANTIPHON = Path(sys.executable).with_name("antiphon")
ROOT = Path(__file__).resolve().parents[1]  # the daemon measured is this checkout's (not the installed one's)
ANSWER_LINE = re.compile(r"jam: answer: (\d+) notes, (\d+) bars, first note (\S+) ms, worst (\S+) ms, (\d+) tokens "
                         r"at (\d+) tok/s, late notes so far: (\d+) played, (\d+) dropped")
CALLS = [
    [Note(0, 60, 2, 90), Note(4, 64, 2, 80), Note(8, 67, 2, 85), Note(12, 72, 2, 95)],
    [Note(0, 62, 3, 70), Note(3, 65, 1, 75), Note(6, 69, 2, 80), Note(10, 67, 4, 90)],
    [Note(0, 55, 1, 100), Note(2, 59, 1, 90), Note(4, 62, 4, 95), Note(8, 60, 2, 80), Note(12, 64, 2, 85)],
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class DaemonLog:
    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: re.Pattern | str, after: int, timeout: float) -> tuple[int, re.Match | str] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index in range(after, len(self.lines)):
                line = self.lines[index]
                found = pattern.search(line) if isinstance(pattern, re.Pattern) else (pattern in line and line)
                if found:
                    return index, found
            time.sleep(0.005)
        return None


def play(keyboard: Keyboard, notes: list[Note], bpm: float, origin: float) -> None:
    for offset, message in phrase_events(notes, bpm):
        wait = origin + offset - time.monotonic()
        if wait > 0.002:
            time.sleep(wait - 0.002)
        while time.monotonic() < origin + offset:
            pass
        keyboard.send(message)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=100)
    parser.add_argument("--bpm", type=float, default=240.0)
    parser.add_argument("--weights", default="transformer")
    parser.add_argument("--period", type=int, default=64, help="JACK period in frames at 48 kHz")
    parser.add_argument("--answer-bars", type=int, default=1)
    parser.add_argument("--kernel", default="auto", help="the daemon's --kernel")
    parser.add_argument("--precision", default="auto", help="the daemon's --precision")
    parser.add_argument("--no-realtime-jack", action="store_true",
                        help="run jackd without realtime scheduling (as the tests do)")
    args = parser.parse_args()
    step = step_seconds(args.bpm)

    with JackServer(period=args.period, realtime=not args.no_realtime_jack) as server:
        command = [str(ANTIPHON), "run", "--midi-api", "jack", "--virtual", "--client-name", "antiphon-bench",
                   "--bpm", str(args.bpm), "--answer-bars", str(args.answer_bars), "--seed", "0",
                   "--weights", args.weights, "--kernel", args.kernel, "--precision", args.precision,
                   "--takes-dir", ""]  # a benchmark's exchanges are not the user's takes
        process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
        log = DaemonLog(process)
        ready = log.wait_for("ready:", 0, 120)
        if ready is None:
            print("\n".join(log.lines), file=sys.stderr)
            process.kill()
            return 1
        print(ready[1], file=sys.stderr)
        ports = re.search(r"in=(\S+) out=(\S+?),", ready[1]).groups()
        keyboard = Keyboard("jack", ports[0], ports[1], "bench-keyboard")
        latencies, jitters, errors, rates, consumed, sent_worst, first_steps = [], [], [], [], [], [], []
        late = empty = 0
        mark = len(log.lines)
        try:
            for exchange in range(args.exchanges):
                keyboard.take()
                call = CALLS[exchange % len(CALLS)]
                origin = time.monotonic() + 0.2
                play(keyboard, call, args.bpm, origin)
                found = log.wait_for(ANSWER_LINE, mark, 20)
                if found is None:
                    print(f"exchange {exchange}: no answer", file=sys.stderr)
                    continue
                mark = found[0] + 1
                notes, bars, _, worst, tokens, rate, late_played, late_dropped = found[1].groups()
                late = int(late_played) + int(late_dropped)
                time.sleep(0.05)
                ons = [t for t, m in keyboard.take() if m.type == "note_on" and m.velocity > 0]
                rates.append(float(rate))
                if int(notes):
                    sent_worst.append(float(worst))
                    if float(worst) > 2:
                        print(f"exchange {exchange}: a note sent {worst} ms off its grid time", file=sys.stderr)
                consumed.append(int(tokens) / (int(bars) * 16 * step))
                if not ons:
                    empty += 1
                    continue
                grid_errors = [t - (origin + round((t - origin) / step) * step) for t in ons]
                latencies.append(grid_errors[0] * 1000)
                first_steps.append(round((ons[0] - origin) / step) - 16)  # steps after the call's bar line
                centre = statistics.median(grid_errors)
                jitters.extend(abs(e - centre) * 1000 for e in grid_errors)
                errors.extend(e * 1000 for e in grid_errors)
                if (exchange + 1) % 10 == 0:
                    print(f"{exchange + 1} exchanges: latency p50 {percentile(latencies, 50):.2f} ms, "
                          f"jitter p99 {percentile(jitters, 99):.2f} ms", file=sys.stderr)
                time.sleep(0.1)
        finally:
            keyboard.close()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)

    realtime = statistics.median(r / c for r, c in zip(rates, consumed) if c > 0) if rates else float("nan")
    result = {
        "exchanges": len(latencies) + empty,
        "answers_without_notes": empty,
        "answer_notes": len(errors),
        "latency_p50_ms": round(percentile(latencies, 50), 3),
        "latency_p99_ms": round(percentile(latencies, 99), 3),
        "jitter_p50_ms": round(percentile(jitters, 50), 3),
        "jitter_p99_ms": round(percentile(jitters, 99), 3),
        "jitter_max_ms": round(max(jitters, default=float("nan")), 3),
        "grid_error_p50_ms": round(percentile(errors, 50), 3),
        "grid_error_p99_ms": round(percentile(errors, 99), 3),
        # Inside the daemon, before JACK: the worst note of each answer, sent minus due.
        "daemon_worst_error_p50_ms": round(percentile(sent_worst, 50), 3),
        "daemon_worst_error_p99_ms": round(percentile(sent_worst, 99), 3),
        # Where the answer begins: its first note, in steps after the bar line that ends the call.
        "first_note_step_p50": percentile(first_steps, 50),
        "first_note_on_the_bar_line": round(sum(s == 0 for s in first_steps) / len(first_steps), 3) if first_steps else None,
        "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
        "music_tokens_per_s": round(statistics.median(consumed), 1) if consumed else None,
        "realtime_factor": round(realtime, 1),
        "bpm": args.bpm,
        "jack_period_ms": round(server.period_ms, 3),
        "jack_realtime": server.realtime,
        "weights": args.weights,
        "late_notes": late,
    }
    print(f"exchanges {result['exchanges']}, answer notes {result['answer_notes']}")
    print(f"added response latency  p50 {result['latency_p50_ms']:.2f} ms  p99 {result['latency_p99_ms']:.2f} ms")
    print(f"timing jitter           p50 {result['jitter_p50_ms']:.2f} ms  p99 {result['jitter_p99_ms']:.2f} ms")
    print(f"daemon-side worst note  p50 {result['daemon_worst_error_p50_ms']:.2f} ms  "
          f"p99 {result['daemon_worst_error_p99_ms']:.2f} ms (per answer, before JACK)")
    print(f"first answer note       p50 {result['first_note_step_p50']:.0f} steps after the bar line, "
          f"{result['first_note_on_the_bar_line']} of answers on it")
    print(f"real-time factor        {result['realtime_factor']:.1f}x "
          f"({result['tokens_per_s']} tokens/s generated, {result['music_tokens_per_s']} tokens/s of music)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
