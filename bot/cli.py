"""The operator commands of `python -m bot` (without arguments it runs the bot: bot/__main__.py).

    python -m bot doctor [--timeout S] [--repair]   checklist with fixes; exit 1 if a check fails
    python -m bot service render|install|uninstall|start|stop|restart|status [--system]
    python -m bot version                           (or --version) package, schema, model, adapter
    python -m bot retention                         delete old runs, datasets, backups; rotate service.log

Problems are one line on stderr and exit code 2, as for the bot itself.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sqlite3
import sys
from pathlib import Path

from common.home import describe_disk_use
from common.settings import SettingsError
from data.backup import schema_version
from data.migrations import MIGRATIONS
from data.settings import DataSettings
from inference.modelstore import DEFAULT_MODEL_NAME
from inference.settings import InferenceSettings
from training.lifecycle.settings import LifecycleSettings

from .doctor import repair_registry, run_doctor
from .os_service import ServiceError, ServiceSpec, control, install, status, uninstall
from .retention import apply_retention
from .settings import BotSettings

EXIT_SETUP = 2


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="The Farense bot. Without a command: "
        "run it (Telegram, or a console chat when TELEGRAM_BOT_TOKEN is unset).",
    )
    parser.add_argument("--version", action="store_true", help="same as the version command")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = commands.add_parser("doctor", help="check settings, Telegram, model, machine and state; say what to fix")
    doctor.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the Bot API (default 3)")
    doctor.add_argument("--repair", action="store_true", help="first finish interrupted adapter-registry changes")
    service = commands.add_parser("service", help="run the bot 24/7 under systemd (Linux) or launchd (macOS)")
    service.add_argument("action", choices=("render", "install", "uninstall", "start", "stop", "restart", "status"))
    service.add_argument(
        "--system",
        action="store_true",
        help="a system unit / LaunchDaemon running as you (needs root) instead of your user's own",
    )
    service.add_argument("--platform", choices=("linux", "macos"), help="render for another platform")
    service.add_argument("--workdir", type=Path, help="folder with .env the bot runs in (default: this one)")
    service.add_argument("--out", type=Path, help="render: write the file into this folder instead of printing it")
    commands.add_parser("version", help="package, database schema, model and adapter versions")
    commands.add_parser(
        "retention",
        help="what the nightly run does after training: delete old runs, datasets "
        "and backups, rotate service.log; prints the disk use before and after",
    )
    args = parser.parse_args(argv)
    try:
        if args.version or args.command == "version":
            print("\n".join(version_lines()))
            return 0
        if args.command == "doctor":
            if args.repair:
                print("\n".join(f"repair: {line}" for line in repair_registry()))
            return run_doctor(args.timeout)
        if args.command == "service":
            return _service(args)
        if args.command == "retention":
            retained = apply_retention(DataSettings.load(), BotSettings.load(), LifecycleSettings.load())
            print(f"before: {describe_disk_use(retained.before)}\n{retained.summary('en')}")
            return 0
    except (SettingsError, ServiceError, OSError) as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_SETUP
    parser.print_help()
    return EXIT_SETUP


def _service(args: argparse.Namespace) -> int:
    if args.platform and args.action != "render":
        raise ServiceError("--platform is for render only: install on the machine that runs the bot")
    spec = ServiceSpec.here(
        InferenceSettings.load().farense_home, platform=args.platform, system=args.system, workdir=args.workdir
    )
    if args.action == "render":
        if args.out is None:
            print(spec.render(), end="")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / spec.file.name).write_text(spec.render(), encoding="utf-8")
            print(args.out / spec.file.name)
        return 0
    if args.action == "install":
        done = install(spec)
    elif args.action == "uninstall":
        done = uninstall(spec)
    elif args.action == "status":
        done = status(spec)
    else:
        done = control(spec, args.action)
    print("\n".join(done))
    return 0


def version_lines() -> list[str]:
    """Package, schema, model and adapter versions: what `python -m bot version` prints."""
    versions = {name: _version(name) for name in ("farense-bot", "mlx", "mlx-lm", "python-telegram-bot")}
    lines = [
        f"farense-bot {versions.pop('farense-bot')} (python {sys.version.split()[0]}, "
        + ", ".join(f"{name} {value}" for name, value in versions.items())
        + ")"
    ]
    try:
        data, inference = DataSettings.load(), InferenceSettings.load()
    except SettingsError as error:
        return lines + [f"settings invalid: {error}"]
    try:
        on_disk = schema_version(data.home.database)
        found = f"v{on_disk} in {data.home.database}" if on_disk is not None else "no database yet"
    except sqlite3.Error as error:
        found = f"{data.home.database} unreadable ({error})"
    lines.append(f"database schema: v{len(MIGRATIONS)} in this code, {found}")
    lines.append(f"model: {inference.model_path or f'embedded {DEFAULT_MODEL_NAME}'}")
    try:
        pointer = json.loads(inference.home.production_pointer.read_text())
        adapter = pointer.get("version") or "none (base model)"
    except FileNotFoundError:
        adapter = "none (base model)"
    except (OSError, ValueError, AttributeError) as error:
        adapter = f"unreadable production.json ({error})"
    lines.append(f"adapter: {adapter}")
    return lines


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
