"""How long built datasets are kept: until a message they hold is forgotten, and at most the newest
KEEP_DATASETS (with the copies training made of them).

/forget beyond the database's rows: the store deletes the rows and leaves a tombstone
(data/store.py); this then folds the WAL into the database and truncates it, and deletes every
built dataset that holds a message the store no longer has, with its copies. A dataset
records the ids of the messages it holds (its manifest's `message_ids`, ids only); one built
before that was recorded, holding feedback or corrections, is deleted too, since what it holds
cannot be told. A copy made by training (`<dataset>-grounded-<hash>`, and a warm start's
`…-warm-<hash>`) goes with its dataset.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from common.files import read_json_object
from common.home import Home

from .builder import MANIFEST, built_dataset_name
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
    """Delete the built datasets (and their copies) holding a message that is gone; returns them.
    The `latest` pointer goes with the dataset it names (the next build writes a new one)."""
    if not home.datasets.is_dir():
        return []
    existing = {row[0] for row in store.read("SELECT id FROM messages")}
    dropped = []
    for folder in sorted(home.datasets.iterdir()):
        manifest = read_json_object(folder / MANIFEST)
        if manifest is None or "parent" in manifest:  # not a built dataset (a grounded copy has a parent)
            continue
        held = manifest.get("message_ids")
        if held is None:
            sources = manifest.get("sources") or {}
            stale = bool(sources.get("feedback") or sources.get("correction"))
        else:
            stale = any(message_id not in existing for message_id in held)
        if stale:
            _delete(home, folder)
            dropped.append(folder)
    if dropped:
        if _latest_name(home) in {path.name for path in dropped}:
            home.latest_dataset.unlink(missing_ok=True)
        log.info("deleted %d dataset(s) holding forgotten messages: %s", len(dropped), [path.name for path in dropped])
    return dropped


def prune_datasets(home: Home, keep: int, in_use: set[str] = frozenset()) -> list[Path]:
    """Keep the newest `keep` built datasets, the one `latest` names and those named in `in_use`
    (e.g. what kept training runs validate on); delete the others and every copy made from a
    dataset that is gone. Returns the deleted folders."""
    if not home.datasets.is_dir():
        return []
    folders = sorted(
        folder for folder in home.datasets.iterdir() if folder.is_dir() and not folder.name.startswith(".")
    )
    built = [folder for folder in folders if built_dataset_name(folder.name) == folder.name]
    kept = (
        {folder.name for folder in built[-keep:]} | {_latest_name(home)} | {built_dataset_name(name) for name in in_use}
    )
    removed = []
    for folder in built:
        if folder.name not in kept:
            removed += _delete(home, folder)
    for copy in folders:
        if copy.is_dir() and built_dataset_name(copy.name) not in kept:
            shutil.rmtree(copy, ignore_errors=True)
            removed.append(copy)
    if removed:
        log.info("pruned %d dataset folder(s), keeping the newest %d datasets", len(removed), keep)
    return removed


def _delete(home: Home, folder: Path) -> list[Path]:
    """Delete a built dataset and the copies made from it; returns the folders deleted."""
    folders = [path for path in home.datasets.iterdir() if built_dataset_name(path.name) == folder.name]
    for path in folders:
        shutil.rmtree(path, ignore_errors=True)
    return folders


def _latest_name(home: Home) -> str | None:
    try:
        return json.loads(home.latest_dataset.read_text(encoding="utf-8")).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
