"""The one settings base class: environment variables and `.env`, read by pydantic-settings.

No module reads `os.environ` for a setting: every package's settings class derives from
`Settings` (or `HomeSettings`, when it needs paths under FARENSE_HOME), and `load()` turns
pydantic's report into a `SettingsError` with one line per bad variable, named as in the
environment, so a bad value is caught once, at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .home import OWNER_ONLY_UMASK, Home, default_root

S = TypeVar("S", bound="Settings")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names it in one line per problem (after an
    "invalid settings:" line when built from a list); `problems` holds those lines alone."""

    def __init__(self, problems: str | list[str]) -> None:
        if isinstance(problems, str):
            self.problems = problems.splitlines()
            super().__init__(problems)
        else:
            self.problems = list(problems)
            super().__init__("invalid settings:\n" + "\n".join(self.problems))


def explain(error: ValidationError, settings_class: type[BaseSettings]) -> SettingsError:
    """Turn pydantic's report into one clear line per setting, named as in the environment."""
    prefix = settings_class.model_config.get("env_prefix", "")
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:  # a whole-model check names its settings itself
            lines.append(message)
            continue
        name = (prefix + str(problem["loc"][0])).upper()
        named = message if message.startswith(name) else f"{name}: {message}"
        lines.append(f"{named} (got {problem.get('input')!r})")
    return SettingsError(lines)


class Settings(BaseSettings):
    """Base of every settings class: the environment, then `.env`; unknown variables ignored."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    @classmethod
    def load(cls: type[S], **overrides: object) -> S:
        """Read the environment; `overrides` (e.g. CLI flags) win. Raises SettingsError."""
        try:
            return cls(**overrides)
        except ValidationError as error:
            raise explain(error, cls) from None


class HomeSettings(Settings):
    """FARENSE_HOME and the folders that may live elsewhere, declared once for every package."""

    farense_home: Path = Field(
        default_factory=default_root, description="All the state: database, models, adapters, runs, logs"
    )
    database_path: Path | None = Field(default=None, description="Empty = $FARENSE_HOME/farense.db")
    models_dir: Path | None = Field(default=None, description="Converted-model cache; empty = $FARENSE_HOME/models")
    datasets_dir: Path | None = Field(default=None, description="Empty = $FARENSE_HOME/datasets")
    backups_dir: Path | None = Field(default=None, description="Empty = $FARENSE_HOME/backups")

    @field_validator("database_path", "models_dir", "datasets_dir", "backups_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("farense_home", "database_path", "models_dir", "datasets_dir", "backups_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def home(self) -> Home:
        return Home(
            self.farense_home,
            models_dir=self.models_dir,
            database_path=self.database_path,
            datasets_dir=self.datasets_dir,
            backups_dir=self.backups_dir,
        )


def protect_home() -> None:
    """What every entry point does first: the home's files for the owner only (`Home.protect`).
    A bad setting is left for the entry point's own settings to report."""
    try:
        home = HomeSettings.load().home
    except SettingsError:
        os.umask(OWNER_ONLY_UMASK)
        return
    home.protect()
