"""What an upgrade does to adapters: those trained on the base model in its other Q/K layout are
migrated to its layout (inference/layout.py), the registry's after a backup of the database and the
adapters. The bot does it at start, before it loads the model; `python -m training migrate` does
it by hand, and `--adapter FOLDER` migrates one adapter outside the registry (ADAPTER_PATH) in place.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common.files import fsync_tree, replace_dir
from data.backup import create_backup
from data.settings import DataSettings
from inference.adapters import VERSION_FILE, AdapterError, read_adapter
from inference.layout import LAYOUTS, migrated_files

from ..errors import EXIT_OK, UsageError, guarded, parse
from .commands import open_registry
from .registry import Registry

BACKUP_LABEL = "pre-layout-migration"


def upgrade_adapters(registry: Registry | None = None) -> list[str]:
    """Migrate the registry's adapters that need it, after a backup; what was done, one line each."""
    registry = registry or open_registry()
    pending = registry.layout_migrations()
    if not pending:
        return []
    home = DataSettings.load().home
    backup = create_backup(home.database, home.adapters, home.backups, label=BACKUP_LABEL)
    names = ", ".join(entry.version for entry in pending)
    return [f"{names}: backed up to {backup.path} before migrating", *registry.migrate_layouts()]


def migrate_folder(folder: Path, registry: Registry) -> str:
    """Migrate the adapter in `folder` (not a registered version) to the base model's layout."""
    folder = Path(folder)
    if (folder / VERSION_FILE).is_file():
        raise UsageError(f"{folder} is a registered version: run `python -m training migrate` without --adapter")
    adapter = read_adapter(folder)
    layout = registry.base_layout()
    trained = layout.trained_for(adapter)
    if trained == layout.qk_layout:
        return f"{folder}: already in the Q/K layout of {layout.model}, nothing to do"
    if not layout.needs_migration(adapter):
        raise AdapterError(
            f"{folder} was trained for {LAYOUTS[trained]} on {adapter.base_model or 'an unrecorded model'}, not on "
            f"{layout.model}: it cannot be migrated to it"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for file in folder.iterdir():
            if file.is_file():
                shutil.copy2(file, staging / file.name)
        for name, data in migrated_files(adapter, layout).items():
            (staging / name).write_bytes(data)
        fsync_tree(staging)
        replace_dir(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"{folder}: migrated from {trained} to {layout.qk_layout} Q/K layout for {layout.model}"


# --- python -m training migrate [--adapter FOLDER] -------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training migrate",
        description="migrate adapters trained for the base model's other Q/K layout (the registry's, "
        "backed up first; the bot does it at start)",
    )
    parser.add_argument("--adapter", type=Path, metavar="FOLDER", help="one adapter folder outside the registry")
    args = parse(parser, argv)
    return args if isinstance(args, int) else _migrate(args)


@guarded
def _migrate(args: argparse.Namespace) -> int:
    registry = open_registry()
    lines = [migrate_folder(args.adapter, registry)] if args.adapter else upgrade_adapters(registry)
    print("\n".join(lines) or "nothing to migrate: every registered adapter has the base model's Q/K layout")
    return EXIT_OK
