"""Settings of the data package, read from the environment and `.env` (common/settings.py).

No module of this package reads `os.environ`: everything configurable goes through here, so a bad
value is caught once, at start-up, with a message that names the variable to fix. Paths under
FARENSE_HOME (database, datasets, backups, adapters) come from `settings.home`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from common.settings import HomeSettings

PACKAGE_SEED_DIR = Path(__file__).resolve().parent / "seed"


class DataSettings(HomeSettings):
    """Where the seed corpus lives, how examples are split, and how many backups are kept."""

    backup_keep: int = Field(default=7, ge=1, description="Nightly backups kept (taken before retraining)")
    backup_max_age_days: int = Field(
        default=30,
        ge=1,
        description="Backups of any kind older than this are deleted; the privacy notice "
        "states it (a /forget reaches the backups within it)",
    )
    keep_datasets: int = Field(
        default=5, ge=1, description="Built datasets kept, with the copies training made of them"
    )
    seed_dir: Path = PACKAGE_SEED_DIR
    valid_fraction: float = Field(default=0.1, gt=0.0, le=0.5)
    test_fraction: float = Field(default=0.1, ge=0.0, le=0.5)
    split_salt: str = Field(default="farense", min_length=1)
    feedback_per_user: int = Field(
        default=3,
        ge=0,
        description="Thumbs-up examples one user may add to a "
        "dataset build (their earliest; admin corrections are not capped)",
    )

    @field_validator("seed_dir", mode="after")
    @classmethod
    def _expand_seed_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _room_for_training(self) -> DataSettings:
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("VALID_FRACTION + TEST_FRACTION must leave room for training")
        return self
