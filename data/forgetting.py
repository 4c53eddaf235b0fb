"""/forget beyond the database's rows: the WAL, and the datasets built from the user's messages.

The store deletes the rows and leaves a tombstone (data/store.py); this then folds the WAL into
the database and truncates it, and deletes every built dataset that holds a message the store no
longer has, with its grounded copies. A dataset records the ids of the messages it holds (its
manifest's `message_ids`, ids only); one built before that was recorded, holding feedback or
corrections, is deleted too, since what it holds cannot be told.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from common.home import Home

from .builder import GROUNDED_SUFFIX, MANIFEST
from .store import Store

log = logging.getLogger(__name__)


def forget_user(store: Store, home: Home, user_id: int) -> dict[str, int]:
    """Everything /forget does to stored data; returns what went per kind (rows, and datasets)."""
    counts = store.forget_user(user_id)
    store.checkpoint()
    counts["datasets"] = len(drop_datasets_of_deleted_messages(store, home))
    log.info("forgot user %s: %s", user_id, counts)
    return counts


def drop_datasets_of_deleted_messages(store: Store, home: Home) -> list[Path]:
    """Delete the built datasets (and grounded copies) holding a message that is gone; returns them.
    The `latest` pointer goes with the dataset it names (the next build writes a new one)."""
    if not home.datasets.is_dir():
        return []
    existing = {row[0] for row in store.read("SELECT id FROM messages")}
    dropped = []
    for folder in sorted(home.datasets.iterdir()):
        manifest = _manifest(folder)
        if manifest is None or "parent" in manifest:  # not a built dataset (a grounded copy has a parent)
            continue
        held = manifest.get("message_ids")
        if held is None:
            sources = manifest.get("sources") or {}
            stale = bool(sources.get("feedback") or sources.get("correction"))
        else:
            stale = any(message_id not in existing for message_id in held)
        if stale:
            for path in [folder, *home.datasets.glob(f"{folder.name}{GROUNDED_SUFFIX}-*")]:
                shutil.rmtree(path, ignore_errors=True)
                dropped.append(path)
    if dropped:
        try:
            named = json.loads(home.latest_dataset.read_text(encoding="utf-8")).get("dataset")
        except (OSError, ValueError, AttributeError):
            named = None
        if named in {path.name for path in dropped}:
            home.latest_dataset.unlink(missing_ok=True)
        log.info("deleted %d dataset folder(s) holding forgotten messages: %s", len(dropped),
                 [path.name for path in dropped])
    return [path for path in dropped if GROUNDED_SUFFIX not in path.name]


def _manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None
