"""`antiphon` commands. Each subcommand is one `add_<name>` function registered in COMMANDS."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from daemon import startup_signals
from daemon.config import (
    MODEL_AND_SAMPLING,
    ConfigError,
    add_setting_flags,
    load_settings,
    mqtt_password,
    overrides_from,
    settings_from,
    with_preset,
)
from daemon.journal import setup_logging
from daemon.paths import installed_version

# Where the demo's settings differ from the daemon's (the flags it shares with `run` override them).
# No takes: the demo writes its own MIDI file.
DEMO_DEFAULTS = {"tempo": {"bpm": 120.0}, "jam": {"seed": 0}, "takes": {"dir": ""}}


def _settings(args: argparse.Namespace):
    return load_settings(args.config, overrides_from(args))


def add_run(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the jam daemon: listen on MIDI in, answer on MIDI out")
    parser.add_argument("--config", default=None, help="TOML config file (default: ~/.config/antiphon/config.toml)")
    parser.add_argument("--preset", default="", help="start with this [presets.NAME] table of the config applied")
    add_setting_flags(parser)
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    from daemon.app import JamApp, StartupError
    from daemon.control_surface import check_weights

    settings = _settings(args)
    mqtt_password(settings.mqtt)  # a missing or unreadable password file is a configuration error (exit 2)
    for preset in settings.presets:
        for key, value in preset.values:
            if key == "weights":
                try:
                    check_weights(value)
                except ValueError as error:
                    raise ConfigError(f"{settings.source}: preset {preset.name!r}: weights {error}") from None
    if args.preset:
        settings = with_preset(settings, args.preset)
    setup_logging(settings.log.level)
    app = JamApp(settings, args.config, overrides_from(args), preset=args.preset)
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
    parser.add_argument("--transport", choices=("auto", "jack", "in-process"), default="auto",
                        help="auto: existing MIDI, else a private JACK dummy server, else an in-process pair")
    add_setting_flags(parser, MODEL_AND_SAMPLING, DEMO_DEFAULTS)  # as `antiphon run` takes them
    parser.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    settings = settings_from(DEMO_DEFAULTS, "demo's defaults", overrides_from(args))
    setup_logging("warning")
    return run_demo(args.out, settings, args.transport)


def add_takes(subparsers) -> None:
    parser = subparsers.add_parser("takes", help="list the takes kept ([takes] dir): date, length, notes")
    parser.add_argument("--config", default=None, help="TOML config file (default: ~/.config/antiphon/config.toml)")
    add_setting_flags(parser, frozenset({("takes", "dir")}))
    parser.set_defaults(handler=takes_command)


def takes_command(args: argparse.Namespace) -> int:
    import time

    from daemon.paths import default_takes_folder
    from daemon.takes import PATTERN, summarize

    folder_setting = _settings(args).takes.dir
    if not folder_setting:
        print("takes are off ([takes] dir is empty)", file=sys.stderr)
        return 1
    folder = default_takes_folder() if folder_setting == "auto" else Path(folder_setting).expanduser()
    paths = sorted(folder.glob(PATTERN))
    print(f"{len(paths)} takes in {folder}")
    for path in paths:
        try:
            take = summarize(path)
        except ValueError as error:
            print(f"  {error}")
            continue
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
        minutes, seconds = divmod(round(take.seconds), 60)
        print(f"  {date}  {minutes:3d}:{seconds:02d}  {take.player_notes:5d} played  {take.model_notes:5d} answered  "
              f"{path.name}")
    return 0




def add_generate(subparsers) -> None:
    # Imported when used: it imports torch (seconds), which `run` must not wait for before it
    # holds its signals.
    from daemon.generate import add_parser

    add_parser(subparsers)


COMMANDS: list[Callable] = [add_run, add_ports, add_demo, add_generate, add_takes]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antiphon", description="A realtime MIDI jam partner.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
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
