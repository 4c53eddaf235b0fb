"""Settings of the data package, read from the environment and `.env` by pydantic-settings.

No module of this package reads `os.environ`: everything configurable goes through here, so a bad
value is caught once, at start-up, with a message that names the variable to fix.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_SEED_DIR = Path(__file__).resolve().parent / "seed"


class SettingsError(ValueError):
    """A setting has an invalid value; the message has one line per problem, naming the variable."""


def _default_home() -> Path:
    return Path.home() / ".farense"


class DataSettings(BaseSettings):
    """Where the conversation store and the datasets live, and how examples are split."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    farense_home: Path = Field(default_factory=_default_home)
    database_path: Path | None = Field(default=None, description="Empty = $FARENSE_HOME/farense.db")
    datasets_dir: Path | None = Field(default=None, description="Empty = $FARENSE_HOME/datasets")
    backups_dir: Path | None = Field(default=None, description="Empty = $FARENSE_HOME/backups")
    backup_keep: int = Field(default=7, ge=1, description="Nightly backups kept (taken before retraining)")
    seed_dir: Path = PACKAGE_SEED_DIR
    valid_fraction: float = Field(default=0.1, gt=0.0, le=0.5)
    test_fraction: float = Field(default=0.1, ge=0.0, le=0.5)
    split_salt: str = Field(default="farense", min_length=1)

    @field_validator("farense_home", "database_path", "datasets_dir", "backups_dir", "seed_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _fill_defaults_from_home(self) -> "DataSettings":
        """Paths left empty follow FARENSE_HOME, so one variable moves all the state."""
        if self.database_path is None:
            self.database_path = self.farense_home / "farense.db"
        if self.datasets_dir is None:
            self.datasets_dir = self.farense_home / "datasets"
        if self.backups_dir is None:
            self.backups_dir = self.farense_home / "backups"
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("VALID_FRACTION + TEST_FRACTION must leave room for training")
        return self

    @property
    def database_file(self) -> Path:
        """The database path, never None once validated (typed for callers' convenience)."""
        assert self.database_path is not None
        return self.database_path

    @property
    def datasets_root(self) -> Path:
        """The datasets folder, never None once validated (typed for callers' convenience)."""
        assert self.datasets_dir is not None
        return self.datasets_dir

    @property
    def backups_root(self) -> Path:
        """The backups folder, never None once validated (typed for callers' convenience)."""
        assert self.backups_dir is not None
        return self.backups_dir

    @property
    def adapters_dir(self) -> Path:
        """The adapter registry's folder (training/registry.py), backed up as a plain folder."""
        return self.farense_home / "adapters"

    @classmethod
    def load(cls, **overrides: object) -> "DataSettings":
        """Build the settings, turning pydantic's report into a `SettingsError` naming each variable."""
        try:
            return cls(**overrides)
        except ValidationError as error:
            raise _explain(error) from None


def _explain(error: ValidationError) -> SettingsError:
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]).upper() if problem["loc"] else "SETTINGS"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["loc"]:
            lines.append(f"{name}: {message} (got {problem.get('input')!r})")
        else:
            lines.append(message)
    return SettingsError("\n".join(lines))
