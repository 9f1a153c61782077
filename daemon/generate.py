"""`antiphon generate`: continue a primer (or a lone bar) and write MIDI plus a piano roll."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from daemon.codec import BAR, bar_times, decode, encode
from daemon.config import MODEL_AND_SAMPLING, add_setting_flags, overrides_from, settings_from
from daemon.engine import Engine
from daemon.grammar import INITIAL, GrammarError, GrammarState, advance, next_mask, walk
from daemon.midifile import MidiFileError, read_midi, write_midi
from daemon.paths import weights_folder
from daemon.pianoroll import write_piano_roll
from daemon.sampling import make_generator, sample
from daemon.weights import WeightsError


def continue_tokens(
    engine: Engine, state: GrammarState, *, tokens: int | None = None, bars: int | None = None,
    temperature: float = 1.0, top_p: float = 1.0, rng: np.random.Generator,
) -> list[int]:
    """Sample tokens under the grammar until `tokens` tokens or `bars` new bar lines."""
    out: list[int] = []
    bars_seen = 0
    while (tokens is None or len(out) < tokens) and (bars is None or bars_seen < bars):
        token = sample(engine.logits, next_mask(state), temperature, top_p, rng)
        state = advance(state, token)
        engine.feed((token,))
        out.append(token)
        bars_seen += token == BAR
    return out


def primer_tokens(path: str | None, tokens: int = 256) -> list[int]:
    """The last `tokens` tokens of a MIDI file's encoding, cut to start on a bar, or a lone BAR."""
    if path is None:
        return [BAR]
    notes, bars = read_midi(path)
    stream = encode(notes, bars)
    if len(stream) <= tokens:
        return stream
    # A window must open on a bar line for the grammar walk: re-encode from the bar that
    # starts the last `tokens` tokens.
    window_start_bar = _bar_start_covering(stream, len(stream) - tokens)
    shifted = [n._replace(start=n.start - window_start_bar) for n in notes if n.start >= window_start_bar]
    stream = encode(shifted, [b - window_start_bar for b in bars if b >= window_start_bar])
    return stream[:tokens]


def _bar_start_covering(stream: Sequence[int], index: int) -> int:
    times = bar_times(stream[: index + 1])
    return times[-1] if times else 0


# Where generate's defaults differ from the daemon's: exact fp32 decoding (an offline tool has
# the time), and the tempo written to the MIDI file.
DEFAULTS = {"model": {"precision": "fp32"}, "tempo": {"bpm": 120.0}}


def run_generate(args: argparse.Namespace) -> int:
    settings = settings_from(DEFAULTS, "generate's defaults", overrides_from(args))  # ConfigError: the CLI's exit 2
    model, jam = settings.model, settings.jam
    try:
        engine = Engine.load(weights_folder(model.weights), None if model.device == "auto" else model.device,
                             precision=model.precision, kernel=model.kernel)
        primer = primer_tokens(args.prime)
        state = walk(primer, INITIAL)
    except (WeightsError, MidiFileError, GrammarError, ValueError) as error:
        print(f"antiphon generate: {error}", file=sys.stderr)
        return 2
    engine.reset(primer)
    rng = make_generator(jam.seed if jam.seed >= 0 else None)
    new = continue_tokens(
        engine, state, tokens=args.tokens, bars=None if args.tokens else args.bars,
        temperature=jam.temperature, top_p=jam.top_p, rng=rng,
    )
    everything = primer + new
    notes = decode(everything)
    # decode() keeps stream order, so the primer's notes come first.
    primed = decode(primer)
    generated = notes[len(primed):]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = ([("primer", primed)] if primed else []) + [("generated", generated)]
    write_midi(out, parts, bpm=settings.tempo.bpm)
    picture = out.with_suffix(".png")
    write_piano_roll(picture, [(primed, "grey"), (generated, "blue")], bar_times(everything))
    print(f"wrote {out} and {picture}: {len(new)} tokens, {len(generated)} notes from {engine.name} ({engine.kind})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="continue a primer and write MIDI plus a piano-roll PNG")
    parser.add_argument("--prime", help="a MIDI file whose last 256 tokens prime the model")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--bars", type=int, default=8, help="bars to generate (default 8)")
    length.add_argument("--tokens", type=int, help="tokens to generate instead of bars")
    parser.add_argument("--out", required=True, help="MIDI file to write; the PNG goes beside it")
    add_setting_flags(parser, MODEL_AND_SAMPLING, DEFAULTS)  # as `antiphon run` takes them
    parser.set_defaults(handler=run_generate)
