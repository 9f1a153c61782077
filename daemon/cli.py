"""`antiphon` commands. Each subcommand is one `add_<name>` function registered in COMMANDS."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable

from daemon import startup_signals
from daemon.config import ConfigError, add_setting_flags, load_settings, overrides_from

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _settings(args: argparse.Namespace):
    return load_settings(args.config, overrides_from(args))


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def add_run(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the jam daemon: listen on MIDI in, answer on MIDI out")
    parser.add_argument("--config", default=None, help="TOML config file (default: ~/.config/antiphon/config.toml)")
    add_setting_flags(parser)
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from daemon.app import JamApp, StartupError

    settings = _settings(args)
    _setup_logging(settings.log.level)
    app = JamApp(settings, args.config, overrides_from(args))
    try:
        code = asyncio.run(app.run())
    except StartupError as error:
        logging.getLogger("antiphon").error("%s", error)
        return 1
    # Everything is released and closed; tearing down torch's interpreter state can take
    # longer than a service manager's stop timeout on a busy machine, and achieves nothing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_ports(subparsers) -> None:
    parser = subparsers.add_parser("ports", help="list the MIDI ports that exist")
    parser.add_argument("--midi-api", choices=("alsa", "jack"), default="alsa")
    parser.set_defaults(handler=ports_command)


def ports_command(args: argparse.Namespace) -> int:
    from daemon.ports import MidiUnavailable, list_ports

    try:
        sources, destinations = list_ports(args.midi_api)
    except MidiUnavailable as error:
        print(f"no MIDI ports: {error}", file=sys.stderr)
        return 1
    print("inputs (play into antiphon with --in NAME):")
    for name in sources:
        print(f"  {name}")
    print("outputs (antiphon answers there with --out NAME):")
    for name in destinations:
        print(f"  {name}")
    return 0


def add_demo(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="a jam without a keyboard: a built-in phrase, answered")
    parser.add_argument("--out", default="out/demo", help="folder for the MIDI file and the piano roll")
    parser.add_argument("--weights", default="transformer", help="transformer, lstm or a weights folder")
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transport", choices=("auto", "jack", "in-process"), default="auto",
                        help="auto: existing MIDI, else a private JACK dummy server, else an in-process pair")
    parser.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    _setup_logging("warning")
    return run_demo(args.out, args.weights, args.bpm, args.seed, args.transport)


def add_generate(subparsers) -> None:
    # Imported when used: it imports torch (seconds), which `run` must not wait for before it
    # holds its signals.
    from daemon.generate import add_parser

    add_parser(subparsers)


COMMANDS: list[Callable] = [add_run, add_ports, add_demo, add_generate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antiphon", description="A realtime MIDI jam partner.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        startup_signals.hold()  # first: a SIGHUP while torch loads must not end the daemon
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except ConfigError as error:
        print(f"antiphon: {error}", file=sys.stderr)
        return 2
    finally:
        startup_signals.release()


if __name__ == "__main__":
    sys.exit(main())
