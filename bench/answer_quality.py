"""Answers judged as music: each system's answers to calls from held-out pieces, against what the
piece really plays next (the human reference), in the figures of daemon/music_figures.py.

    python bench/answer_quality.py [--data DIR] [--calls N] [--seeds K] [--json]

Calls are 2- and 4-bar windows from evenly spaced places in each file of the folder (default: the
reference test set), read with the project's loader. Each call is played into a fresh session's
stream exactly as the daemon commits a player's notes (TokenStream, the engine fed token by
token), and answered as the daemon answers: for as many bars as the call, from the bar line after
it, by the daemon's own offline answer loop (daemon.answer_loop.generate_answer: answer_mask, the
steering of daemon/steering.py, daemon.sampling.sample) with the jam settings' defaults (or
--set NAME=VALUE changes), K seeds.

Systems: transformer and lstm (the shipped weights, the daemon's native engine), human (the
file's real next bars, the reference), other_piece (the human continuation of a call of the same
shape from another file: chance level for relatedness), random (tokens drawn uniformly under the
same mask), repeat (the call again), tritone (the call transposed by 6 semitones: a wrong key).

Prints a Markdown table of each figure's mean ± standard error over calls, and each model's
paired difference from the human reference per call; with --json, one JSON line per system
instead (`system`, `calls`, every figure's mean, `<figure>_se`, `<figure>_minus_human` and
`<figure>_minus_human_se`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.answer_loop import compose_mask, generate_answer  # noqa: E402
from daemon.codec import BAR, VOCAB_SIZE, Note, is_duration, token_value  # noqa: E402
from daemon.config import ConfigError, JamSettings, settings_from  # noqa: E402
from daemon.engine import CONTEXT, Engine  # noqa: E402
from daemon.live_tokenizer import TokenStream  # noqa: E402
from daemon.music_figures import FIGURE_NAMES, figures  # noqa: E402
from daemon.paths import shipped_weights  # noqa: E402
from daemon.sampling import masked_log_probs  # noqa: E402
from daemon.steering import answer_options  # noqa: E402
from training.midi_loading import LoadedMidi, load_folder  # noqa: E402

MODELS = ("transformer", "lstm")
SYSTEMS = (*MODELS, "human", "other_piece", "random", "repeat", "tritone")
CALL_BARS = (2, 4)
MIN_CALL_NOTES = 4  # a call is something played, not a stray note
TRITONE = 6


def shared_data(*parts: str) -> Path:
    """A folder of the shared data beside the checkout (../shared), or beside the folder holding
    the checkout (a worktree one level further down)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared" / "data").is_dir():
            return base.joinpath("shared", "data", *parts)
    return ROOT.parent.joinpath("shared", "data", *parts)


@dataclass(frozen=True)
class Call:
    file: str
    bars: int
    steps_per_bar: int
    notes: list[Note]  # the call, from its first bar line, ended at its last
    continuation: list[Note]  # what the piece plays next for as long, from the bar line after the call

    @property
    def steps(self) -> int:
        return self.bars * self.steps_per_bar


def window(notes: list[Note], start: int, end: int) -> list[Note]:
    """Notes starting in [start, end), counted from start, cut at end (a player releasing there)."""
    return [n._replace(start=n.start - start, duration=min(n.duration, end - n.start)) for n in notes
            if start <= n.start < end]


def calls_in(loaded: LoadedMidi, bars: int) -> list[Call]:
    """Every call of `bars` bars whose answer follows in as many bars of the same length."""
    lines = loaded.bar_starts
    found = []
    for first in range(len(lines) - 2 * bars):
        lengths = {lines[first + k + 1] - lines[first + k] for k in range(2 * bars)}
        if len(lengths) != 1 or not 1 <= (length := lengths.pop()) <= 31:
            continue
        start, middle, end = lines[first], lines[first + bars], lines[first + 2 * bars]
        notes = window(loaded.notes, start, middle)
        if len(notes) >= MIN_CALL_NOTES:
            found.append(Call(loaded.path.name, bars, length, notes, window(loaded.notes, middle, end)))
    return found


def pick_calls(files: list[LoadedMidi], count: int) -> list[Call]:
    """`count` calls spread over the files: round by round, one more evenly spaced place in each
    file, 2 and 4 bars in turn."""
    places = math.ceil(count / max(len(files), 1))
    chosen: list[list[Call]] = []
    for index, loaded in enumerate(files):
        picks = []
        for place in range(places):
            candidates = calls_in(loaded, CALL_BARS[(place + index) % len(CALL_BARS)])
            if candidates:
                picks.append(candidates[(2 * place + 1) * len(candidates) // (2 * places)])
        chosen.append(picks)
    ordered = [picks[place] for place in range(places) for picks in chosen if place < len(picks)]
    return ordered[:count]


def call_stream(call: Call) -> TokenStream:
    """The call as the daemon's stream holds it after the player played it into a fresh session."""
    stream = TokenStream(call.steps_per_bar, history=CONTEXT)
    for note in call.notes:
        stream.append(stream.note_tokens(note))
    return stream


class UniformLogits:
    """The random system: every token the mask allows is equally likely."""

    logits = np.zeros(VOCAB_SIZE, dtype=np.float32)

    def reset(self, tokens) -> None:
        pass

    def feed(self, tokens) -> np.ndarray:
        return self.logits


def generated(engine, call: Call, jam: JamSettings, seed: int) -> list[Note]:
    """One answer to a call from a fresh session (engine primed as the daemon primes it)."""
    stream = call_stream(call)
    engine.reset([BAR])
    engine.feed(list(stream.tokens)[1:])
    options = answer_options(jam, call.notes, call.steps_per_bar, call.steps)
    answer = generate_answer(engine, stream, call.steps, 2 * call.steps, options, np.random.default_rng(seed))
    return [Note(n.start - call.steps, n.pitch, n.duration) for n, _ in answer.notes]


def continuation_nll(engine, call: Call, jam: JamSettings) -> tuple[float, int, int]:
    """The human continuation scored under the daemon's answer distribution (answer_mask, the
    steering, softmax at the jam temperature; top-p left out: it would make any tail token
    infinitely unlikely): (summed NLL of the tokens the mask allows, their count, the count of
    tokens it forbids). Scored from the first answer token through the offset of the bar line
    that ends the answer."""
    stream = call_stream(call)
    engine.reset([BAR])
    engine.feed(list(stream.tokens)[1:])
    start, end = call.steps, 2 * call.steps
    options = answer_options(jam, call.notes, call.steps_per_bar, call.steps)
    prefix = stream.bar_tokens_to(start)
    stream.append(prefix)
    engine.feed(prefix)
    written = stream.copy()  # the continuation's tokens, as the stream would hold them
    targets: list[int] = []
    for note in call.continuation:
        tokens = written.note_tokens(note._replace(start=note.start + start))
        written.append(tokens)
        targets += tokens
    targets += written.bar_tokens_to(end)[:-1]  # the end bar line's offset, not its BAR
    nll, allowed, forbidden = 0.0, 0, 0
    notes: list[Note] = []
    for token in targets:
        mask = compose_mask(stream.state, stream.last_bar, stream.steps_per_bar, start, end, options, notes)
        if mask[token]:
            nll -= float(masked_log_probs(engine.logits.astype(np.float64) / max(jam.temperature, 1e-6), mask)[token])
            allowed += 1
        else:
            forbidden += 1
        engine.feed([token])
        stream.append([token])
        if is_duration(token):
            notes.append(Note(*stream.last_note, token_value(token)))
    return nll, allowed, forbidden


def transposed(notes: list[Note], semitones: int) -> list[Note]:
    if max(n.pitch for n in notes) + semitones > 108:
        semitones -= 12
    return [n._replace(pitch=n.pitch + semitones) for n in notes]


def other_piece(calls: list[Call], index: int) -> list[Note] | None:
    """The continuation of the next call of the same shape from another file."""
    call = calls[index]
    for step in range(1, len(calls)):
        other = calls[(index + step) % len(calls)]
        if other.file != call.file and (other.bars, other.steps_per_bar) == (call.bars, call.steps_per_bar):
            return other.continuation
    return None


def figure_rows(call: Call, answers: list[list[Note]]) -> dict[str, float]:
    """Each figure averaged over the answers (seeds) where it is defined."""
    rows = [figures(call.notes, answer, call.steps_per_bar, call.steps, call.steps).as_dict() for answer in answers]
    means = {}
    for name in FIGURE_NAMES:
        values = [row[name] for row in rows if not math.isnan(row[name])]
        means[name] = float(np.mean(values)) if values else math.nan
    return means


def measure(calls: list[Call], engines: dict[str, object], jam: JamSettings, seeds: int,
            progress: Callable[[str], None]) -> dict[str, list[dict[str, float]]]:
    """Per system, per call: the figures (nan rows where a system has no answer)."""
    uniform = replace(jam, temperature=1.0, top_p=1.0)
    results: dict[str, list[dict[str, float]]] = {system: [] for system in SYSTEMS}
    began = time.monotonic()
    for index, call in enumerate(calls):
        for name, engine in engines.items():
            settings = uniform if name == "random" else jam
            answers = [generated(engine, call, settings, seed=index * 1000 + seed) for seed in range(seeds)]
            results[name].append(figure_rows(call, answers))
        other = other_piece(calls, index)
        results["human"].append(figure_rows(call, [call.continuation]))
        results["other_piece"].append(figure_rows(call, [other] if other is not None else []))
        results["repeat"].append(figure_rows(call, [call.notes]))
        results["tritone"].append(figure_rows(call, [transposed(call.notes, TRITONE)]))
        if (index + 1) % 16 == 0:
            progress(f"{index + 1}/{len(calls)} calls, {time.monotonic() - began:.0f} s")
    return results


def mean_se(values: list[float]) -> tuple[float, float, int]:
    kept = np.array([v for v in values if not math.isnan(v)])
    if kept.size == 0:
        return math.nan, math.nan, 0
    se = float(kept.std(ddof=1) / math.sqrt(kept.size)) if kept.size > 1 else math.nan
    return float(kept.mean()), se, int(kept.size)


def summary(results: dict[str, list[dict[str, float]]], systems: list[str]) -> list[dict]:
    """One row per system: mean, SE and paired difference from human of every figure."""
    rows = []
    human = results["human"]
    for system in systems:
        per_call = results[system]
        row: dict = {"system": system, "calls": len(per_call)}
        for name in FIGURE_NAMES:
            row[name], row[f"{name}_se"], _ = mean_se([r[name] for r in per_call])
            row[f"{name}_minus_human"], row[f"{name}_minus_human_se"], _ = mean_se(
                [r[name] - h[name] for r, h in zip(per_call, human, strict=True)])
        rows.append(row)
    return rows


def register_coverage(calls: list[Call], margins: tuple[int, ...] = (0, 2, 3, 5, 7, 12)) -> dict[int, float]:
    """Share of the human continuations' notes within the call's range widened by each margin
    (what steering.REGISTER_MARGIN is chosen from)."""
    inside = dict.fromkeys(margins, 0)
    total = 0
    for call in calls:
        low, high = min(n.pitch for n in call.notes), max(n.pitch for n in call.notes)
        total += len(call.continuation)
        for margin in margins:
            inside[margin] += sum(low - margin <= n.pitch <= high + margin for n in call.continuation)
    return {margin: count / max(total, 1) for margin, count in inside.items()}


def nll_summary(engine, calls: list[Call], jam: JamSettings) -> dict[str, float]:
    """Mean NLL per allowed token of the human continuations (mean ± SE over calls), and the share
    of their tokens the answer's mask forbids."""
    scored = [continuation_nll(engine, call, jam) for call in calls]
    nll, se, _ = mean_se([total / count for total, count, _ in scored if count])
    forbidden = sum(f for _, _, f in scored) / max(sum(a + f for _, a, f in scored), 1)
    return {"nll": nll, "nll_se": se, "nll_forbidden": forbidden}


def markdown(rows: list[dict], title: str) -> str:
    head = "| system | " + " | ".join(FIGURE_NAMES) + " |"
    lines = [title, "", head, "|---" * (len(FIGURE_NAMES) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row['system']} | " + " | ".join(f"{row[n]:.3f} ± {row[n + '_se']:.3f}" for n in FIGURE_NAMES)
                     + " |")
    for row in rows:
        if "nll" in row:
            lines.append(f"\n{row['system']}: the human continuation scores {row['nll']:.3f} ± {row['nll_se']:.3f} "
                         f"nats per token under the answer's distribution; the mask forbids {row['nll_forbidden']:.3f} "
                         f"of its tokens")
    lines += ["", "Paired difference from the human continuation, per call (mean ± SE):", "", head,
              "|---" * (len(FIGURE_NAMES) + 1) + "|"]
    for row in rows:
        if row["system"] in MODELS:
            lines.append(f"| {row['system']} − human | " + " | ".join(
                f"{row[n + '_minus_human']:+.3f} ± {row[n + '_minus_human_se']:.3f}" for n in FIGURE_NAMES) + " |")
    return "\n".join(lines)


def jam_settings(assignments: list[str]) -> JamSettings:
    """The [jam] defaults with NAME=VALUE changes, read and checked as the daemon's flags are."""
    overrides = {("jam", name): value for name, _, value in (a.partition("=") for a in assignments)}
    return settings_from({}, "--set", overrides).jam


def engines_for(models: list[str]) -> Iterator[tuple[str, object]]:
    for model in models:
        yield model, Engine.load(shipped_weights(model), "cpu", kernel="auto", precision="auto")
    yield "random", UniformLogits()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared_data("reference", "test"), help="a folder of MIDI files")
    parser.add_argument("--calls", type=int, default=96, help="calls, spread over the files")
    parser.add_argument("--seeds", type=int, default=3, help="answers per call for each model and random")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="[jam] settings other than the defaults, e.g. temperature=0.9 key=auto")
    parser.add_argument("--nll", action="store_true",
                        help="also score the human continuation under each model's answer distribution")
    parser.add_argument("--json", action="store_true", help="one JSON line per system instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        jam = jam_settings(args.set)
    except ConfigError as error:
        sys.exit(str(error))

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    files = load_folder(args.data, report=progress).loaded
    calls = pick_calls(files, args.calls)
    if not calls:
        sys.exit(f"{args.data}: no call of {CALL_BARS} bars with an answer after it")
    engines = dict(engines_for(args.models))
    results = measure(calls, engines, jam, args.seeds, progress)
    systems = [s for s in SYSTEMS if s not in MODELS or s in args.models]
    rows = summary(results, systems)
    if args.nll:
        for row in rows:
            if row["system"] in engines:
                row.update(nll_summary(engines[row["system"]], calls, jam))
    if args.json:
        for row in rows:
            print(json.dumps({"data": str(args.data), "seeds": args.seeds, "settings": args.set, **row}))
    else:
        bars = {b: sum(c.bars == b for c in calls) for b in CALL_BARS}
        title = (f"{len(calls)} calls ({', '.join(f'{n} of {b} bars' for b, n in bars.items())}) from "
                 f"{len({c.file for c in calls})} files of {args.data}, {args.seeds} seeds, temperature "
                 f"{jam.temperature}, top-p {jam.top_p}, key {jam.key}, register {jam.register}, clashes {jam.clashes}, "
                 f"density {jam.density}")
        print(markdown(rows, title))
        human = next(row for row in rows if row["system"] == "human")
        coverage = ", ".join(f"±{m}: {share:.3f}" for m, share in register_coverage(calls).items())
        print(f"\nHuman continuation: {1 - human['in_scale']:.3f} of its notes outside the call's scale (mean over "
              f"calls); share of its notes within the call's range widened by a margin: {coverage}")


if __name__ == "__main__":
    main()
