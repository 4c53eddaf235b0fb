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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATABASE_NAME = "farense.db"
PRODUCTION_POINTER = "production.json"
LOCK_NAME = ".lock"  # of the adapter registry and of the runs folder
LATEST_DATASET = "latest"


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
        return {self.bot_lock: "the bot is running",
                self.pipeline_lock: "a retraining pipeline is running",
                self.runs_lock: "a training run is in progress",
                self.adapters_lock: "the adapter registry is being changed"}
