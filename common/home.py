"""Every path under FARENSE_HOME, in one place.

    $FARENSE_HOME/
        farense.db          the conversation store and knowledge base   (DATABASE_PATH)
        models/             converted models, downloads/                (MODELS_DIR)
        adapters/           the adapter registry, production.json, .lock
        runs/               training runs, .lock
        datasets/           built datasets, latest                      (DATASETS_DIR)
        logs/               bot.log, service.log
        status-loss.png     the console's /status loss curve
        backups/            backup archives                             (BACKUPS_DIR)
        bot.lock            held (shared) while a bot runs
        pipeline.lock       held while a retraining pipeline runs, with pipeline_running.json
                            and pipeline_last.json beside it

The settings classes build one with `settings.home` (common/settings.py `HomeSettings`), so the
overrides in parentheses are honoured everywhere.

Everything in it is the owner's alone (conversations are in the database, its WAL, the logs and the
datasets): every entry point sets umask 077 and tightens what already exists (`protect`), and
`disk_use` says how much each part takes, for `doctor` and /status.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE_NAME = "farense.db"
PRODUCTION_POINTER = "production.json"
LOCK_NAME = ".lock"  # of the adapter registry and of the runs folder
LATEST_DATASET = "latest"
OWNER_ONLY_UMASK = 0o077
DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # the database file and SQLite's files beside it


def default_root() -> Path:
    return Path.home() / ".farense"


@dataclass(frozen=True)
class Home:
    """The state folder; `*_dir`/`database_path`: the overrides (None = under `root`)."""

    root: Path
    models_dir: Path | None = None
    database_path: Path | None = None
    datasets_dir: Path | None = None
    backups_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("root", "models_dir", "database_path", "datasets_dir", "backups_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())

    # -- state ------------------------------------------------------------------------------

    @property
    def database(self) -> Path:
        return self.database_path or self.root / DATABASE_NAME

    @property
    def database_files(self) -> list[Path]:
        """The database and the WAL, shared-memory and journal files SQLite keeps beside it."""
        return [self.database.with_name(self.database.name + suffix) for suffix in DATABASE_SUFFIXES]

    @property
    def models(self) -> Path:
        return self.models_dir or self.root / "models"

    @property
    def adapters(self) -> Path:
        """The adapter registry (training's `Registry`); backups copy it as a plain folder."""
        return self.root / "adapters"

    @property
    def production_pointer(self) -> Path:
        """adapters/production.json: the adapter the bot serves (the registry writes it)."""
        return self.adapters / PRODUCTION_POINTER

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def datasets(self) -> Path:
        return self.datasets_dir or self.root / "datasets"

    @property
    def latest_dataset(self) -> Path:
        """The pointer file naming the newest complete dataset folder."""
        return self.datasets / LATEST_DATASET

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def backups(self) -> Path:
        return self.backups_dir or self.root / "backups"

    @property
    def loss_plot(self) -> Path:
        """The console's copy of the /status loss curve."""
        return self.root / "status-loss.png"

    @property
    def accuracy_plot(self) -> Path:
        """The console's copy of the /status gate answers per adapter version."""
        return self.root / "status-accuracy.png"

    @property
    def pipeline_running(self) -> Path:
        return self.root / "pipeline_running.json"

    @property
    def pipeline_last(self) -> Path:
        return self.root / "pipeline_last.json"

    # -- locks (fcntl, common/files.py) -----------------------------------------------------

    @property
    def bot_lock(self) -> Path:
        """Held shared by every running bot; restore and doctor take it exclusively to tell."""
        return self.root / "bot.lock"

    @property
    def pipeline_lock(self) -> Path:
        return self.root / "pipeline.lock"

    @property
    def runs_lock(self) -> Path:
        """One training run per home."""
        return self.runs / LOCK_NAME

    @property
    def adapters_lock(self) -> Path:
        """Held while the registry changes (promotion, cleanup) and while a backup copies it."""
        return self.adapters / LOCK_NAME

    def live_locks(self) -> dict[Path, str]:
        """The locks a live process holds, with what it is: a restore refuses while any is held."""
        return {
            self.bot_lock: "the bot is running",
            self.pipeline_lock: "a retraining pipeline is running",
            self.runs_lock: "a training run is in progress",
            self.adapters_lock: "the adapter registry is being changed",
        }

    # -- privacy and disk -------------------------------------------------------------------

    def protect(self) -> None:
        """umask 077 for this process, and group/other access taken off what already exists: the
        root folder and each of its parts listed above, never anything else that may sit in the
        root (the models folder aside too: no personal data, and it may be a cache shared with others)."""
        os.umask(OWNER_ONLY_UMASK)
        if self.root.is_dir() and not self.root.is_symlink():
            _restrict(self.root)
        parts = [
            *self.database_files,
            self.adapters,
            self.runs,
            self.datasets,
            self.logs,
            self.backups,
            self.loss_plot,
            self.accuracy_plot,
            self.pipeline_running,
            self.pipeline_last,
            self.bot_lock,
            self.pipeline_lock,
        ]
        for part in parts:
            if not part.exists() or part.is_symlink():
                continue
            _restrict(part)
            for folder, subfolders, files in os.walk(part) if part.is_dir() else ():
                for name in [*subfolders, *files]:
                    _restrict(Path(folder) / name)

    def disk_use(self) -> dict[str, int]:
        """Bytes per part of the home: database (with its WAL), models, adapters, runs, datasets,
        backups, logs, and other (whatever else is under the root)."""
        parts = {
            "database": sum(_size(path) for path in self.database_files),
            "models": _size(self.models),
            "adapters": _size(self.adapters),
            "runs": _size(self.runs),
            "datasets": _size(self.datasets),
            "backups": _size(self.backups),
            "logs": _size(self.logs),
        }
        counted = {self.models, self.adapters, self.runs, self.datasets, self.backups, self.logs, *self.database_files}
        parts["other"] = sum(
            _size(path) for path in (self.root.iterdir() if self.root.is_dir() else []) if path not in counted
        )
        return parts


def describe_disk_use(parts: dict[str, int]) -> str:
    """'database 1.2 MB · models 90 MB · … · total 1.3 GB' for doctor and /status."""
    return " · ".join(f"{name} {human_bytes(size)}" for name, size in [*parts.items(), ("total", sum(parts.values()))])


def human_bytes(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _restrict(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            path.chmod(stat.S_IMODE(mode) & ~0o077)
    except OSError as error:  # not ours, or gone meanwhile: say so, never stop a start for it
        log.warning("cannot restrict %s to its owner: %s", path, error)


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (symlinks not followed); 0 if missing."""
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
        return sum((Path(folder) / name).lstat().st_size for folder, _, files in os.walk(path) for name in files)
    except FileNotFoundError:
        return 0
