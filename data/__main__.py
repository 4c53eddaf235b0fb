"""`python -m data`: build a dataset by hand, look at the store, back it up and restore it.

`backup`, `restore` and `backups` archive the database with the adapter registry (data/backup.py).

Operators run these from a shell, so a bad setting or an unreadable database is one readable line
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from pathlib import Path

from common.settings import SettingsError, protect_home

from .backup import BackupError, create_backup, describe, list_backups, read_manifest, restore_backup
from .builder import MANIFEST, SPLITS, BuildError, build_dataset, latest_dataset
from .knowledge_cli import add_knowledge_parser, run_knowledge
from .settings import DataSettings
from .store import Store, StoreError

EXIT_USAGE_OR_SETUP = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a new train/valid/test dataset")
    build.add_argument(
        "--extra",
        type=Path,
        action="append",
        default=[],
        metavar="JSONL",
        help="more pairs, as chat records or question/answer objects (repeatable)",
    )
    stats = commands.add_parser("stats", help="store counts and the latest dataset")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    backup = commands.add_parser("backup", help="archive the database and the adapter registry")
    backup.add_argument("--out", type=Path, help="folder for the archive (default: BACKUPS_DIR)")
    restore = commands.add_parser("restore", help="verify an archive, then replace the database and adapters")
    restore.add_argument("archive", type=Path)
    commands.add_parser("backups", help="list the archives in BACKUPS_DIR")
    add_knowledge_parser(commands)
    args = parser.parse_args(argv)
    protect_home()
    # Problems are printed in the summary; logging them too would show each one twice.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = DataSettings.load()
        if args.command == "build":
            result = build_dataset(settings, extra_jsonl=args.extra)
            print_build(result.manifest, result.path)
        elif args.command in ("backup", "restore", "backups"):
            run_backup_command(args, settings)
        elif args.command == "knowledge":
            with Store(settings.home.database) as store:
                return run_knowledge(store, args)
        else:
            report = collect_stats(settings)
            print(json.dumps(report, indent=2) if args.json else format_stats(report))
    except (
        SettingsError,
        StoreError,
        BuildError,
        BackupError,
        sqlite3.Error,
        OSError,
        json.JSONDecodeError,
        ValueError,
    ) as error:
        lines = error.problems if isinstance(error, SettingsError) else str(error).splitlines()
        for line in lines or [type(error).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE_OR_SETUP
    return 0


def run_backup_command(args: argparse.Namespace, settings: DataSettings) -> None:
    if args.command == "backup":
        home = settings.home
        made = create_backup(home.database, home.adapters, args.out or home.backups)
        print(f"backup: {made.path}")
        print(f"  {describe(made.manifest)}; {len(made.manifest['files'])} files checksummed")
    elif args.command == "restore":
        restored = restore_backup(args.archive, settings.home)
        print(f"verified and restored {args.archive} (made {restored.manifest['created_at']})")
        print(f"  {describe(restored.manifest)}")
        if restored.replaced is not None:
            print(f"  the state it replaced is saved in {restored.replaced.path}")
        if any(restored.forgotten.values()):
            deleted = ", ".join(f"{count} {kind}" for kind, count in restored.forgotten.items() if count)
            print(f"  rows of users who asked to be forgotten since, deleted again: {deleted}")
    else:
        archives = list_backups(settings.home.backups)
        print(f"{settings.home.backups}: {len(archives) or 'no'} backup archive(s)")
        for archive in archives:
            try:
                summary = describe(read_manifest(archive))
            except BackupError as error:
                summary = f"unreadable: {error}"
            print(f"  {archive.name}  {archive.stat().st_size / 1e6:.1f} MB  {summary}")


def print_build(manifest: dict, folder: Path) -> None:
    sources = ", ".join(f"{name} {count}" for name, count in manifest["sources"].items())
    splits = ", ".join(f"{name} {manifest['splits'][name]['count']}" for name in SPLITS)
    dropped = manifest["dropped"]
    print(f"dataset: {folder}")
    print(f"content hash: {manifest['content_hash']}")
    print(f"sources: {sources}")
    print(f"splits: {splits}")
    print(
        f"dropped: {dropped['duplicates']} duplicates, {dropped['superseded']} superseded by"
        f" corrections or the seed, {dropped['opted_out']} from opted-out users;"
        f" {manifest['scrubbed_replacements']} personal details scrubbed"
    )
    print(
        f"withheld: {dropped['instructions']} instructing the model,"
        f" {dropped['over_user_cap']} thumbs-up over a user's cap"
    )
    print(f"problems: {len(manifest['problems'])}")
    for problem in manifest["problems"]:
        print(f"  {problem['file']}:{problem['line']}: {problem['reason']}")


def collect_stats(settings: DataSettings) -> dict:
    """Counts of the store (None if no database yet) and of the latest dataset (None if none)."""
    counts, database = None, settings.home.database
    if database.exists():
        with Store(database, readonly=True) as store:
            counts = store.counts()
    dataset = None
    folder = latest_dataset(settings)
    if folder is not None:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        dataset = {
            "path": str(folder),
            "created_at": manifest["created_at"],
            "content_hash": manifest["content_hash"],
            "sources": manifest["sources"],
            "splits": {name: manifest["splits"][name]["count"] for name in SPLITS},
        }
    return {"database": str(database), "store": counts, "latest_dataset": dataset}


def format_stats(report: dict) -> str:
    lines = [f"database: {report['database']}"]
    counts = report["store"]
    if counts is None:
        lines.append("  (not created yet)")
    else:
        lines.append(
            f"  users {counts['users']} ({counts['opted_out']} opted out), chats"
            f" {counts['chats']}, messages {counts['messages']}, feedback"
            f" +{counts['feedback_up']}/-{counts['feedback_down']}, corrections"
            f" {counts['corrections']}"
        )
    dataset = report["latest_dataset"]
    if dataset is None:
        lines.append("latest dataset: none built yet")
    else:
        lines.append(f"latest dataset: {dataset['path']} ({dataset['created_at']})")
        lines.append("  " + ", ".join(f"{name} {count}" for name, count in dataset["splits"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
