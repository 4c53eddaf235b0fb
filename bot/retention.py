"""Bounded disk: what the bot deletes after each nightly pipeline (and `python -m bot retention`).

    runs/       the newest KEEP_RUNS runs, and the production adapter's (the gate measures every
                candidate on its validation batches); checkpoints of those that ended (training/runs.py)
    datasets/   the newest KEEP_DATASETS built datasets, the latest and those the kept runs validate
                on (the gate reads them again), with the copies training made of them (grounded,
                warm start; data/retention.py)
    backups/    archives of any kind older than BACKUP_MAX_AGE_DAYS (data/backup.py); the nightly
                ones are also capped at BACKUP_KEEP when taken
    logs/       service.log rotated like bot.log (LOG_MAX_MB, LOG_BACKUPS; bot/os_service.py)

The adapter registry prunes itself to KEEP_ADAPTERS when it changes (training/lifecycle/registry.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from common.home import describe_disk_use
from data.backup import prune_older_than
from data.builder import built_dataset_name
from data.retention import prune_datasets
from data.settings import DataSettings
from training.lifecycle.registry import Registry, RegistryError
from training.lifecycle.settings import LifecycleSettings
from training.runs import all_runs, prune_runs

from .os_service import rotate_service_log
from .settings import BotSettings
from .texts import RETAINED_KINDS, Notice, named, notice, text

log = logging.getLogger(__name__)


@dataclass
class Retained:
    before: dict[str, int]  # bytes per part of the home (Home.disk_use)
    after: dict[str, int]
    removed: dict[str, list[Path]] = field(default_factory=dict)  # per kind: what was deleted
    rotated: bool = False  # service.log was rotated

    def summary(self, lang: str) -> str:
        """What went, and the disk use after: for the admins and the CLI."""
        gone = ", ".join(
            f"{len(paths)} {named(RETAINED_KINDS, kind, lang)}" for kind, paths in self.removed.items() if paths
        )
        freed = sum(self.before.values()) - sum(self.after.values())
        return text(
            "retention_done",
            lang,
            deleted=gone or text("retention_nothing", lang),
            rotated=text("retention_rotated", lang) if self.rotated else "",
            freed=f"{freed / 1e6:.1f}",
            disk=describe_disk_use(self.after),
        )


def apply_retention(
    data_settings: DataSettings, bot_settings: BotSettings, lifecycle_settings: LifecycleSettings
) -> Retained:
    home = data_settings.home
    before = home.disk_use()
    runs = prune_runs(home.root, lifecycle_settings.keep_runs, keep_also=production_run(home.root))
    validated_on = {run.valid_set().parent.name for run in all_runs(home.root) if run.valid_set() is not None}
    datasets = prune_datasets(home, data_settings.keep_datasets, validated_on)
    removed = {
        "runs": [path for path in runs if path.name != "checkpoints"],
        "checkpoint folders": [path for path in runs if path.name == "checkpoints"],
        "datasets": [path for path in datasets if built_dataset_name(path.name) == path.name],
        "training copies": [path for path in datasets if built_dataset_name(path.name) != path.name],
        "backups": prune_older_than(home.backups, data_settings.backup_max_age_days),
    }
    rotated = rotate_service_log(home.logs, int(bot_settings.log_max_mb * 1024 * 1024), bot_settings.log_backups)
    retained = Retained(before, home.disk_use(), removed, rotated)
    log.info("%s", retained.summary("en").replace("\n", " | "))
    return retained


def production_run(root: Path) -> list[Path]:
    """The production adapter's training run, however old: the gate measures each candidate
    against production on that run's validation batches."""
    try:
        production = Registry(root).production()
    except RegistryError as error:  # a broken pointer must not stop retention; nothing is spared
        log.warning("production adapter unknown (%s): its run is not kept apart", error)
        return []
    return [production.run_dir] if production is not None and production.run_dir is not None else []


def retention_report(data_settings: DataSettings, bot_settings: BotSettings) -> Notice:
    """Apply retention and say how it went, for the nightly report; never raises (a failure is a
    line for the admins, and the bot keeps serving)."""
    try:
        return apply_retention(data_settings, bot_settings, LifecycleSettings.load()).summary
    except Exception as error:  # settings, a disk problem, a bug: report it, keep the bot alive
        log.exception("retention failed")
        return notice("retention_failed", error=f"{type(error).__name__}: {error}")
