"""DataSettings: defaults follow FARENSE_HOME, and bad values name the variable to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import SettingsError
from data.settings import PACKAGE_SEED_DIR, DataSettings

DATA_VARIABLES = (
    "DATABASE_PATH",
    "DATASETS_DIR",
    "BACKUPS_DIR",
    "MODELS_DIR",
    "SEED_DIR",
    "VALID_FRACTION",
    "TEST_FRACTION",
    "SPLIT_SALT",
)


@pytest.fixture(autouse=True)
def clean_data_env(monkeypatch, tmp_path):
    for name in DATA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FARENSE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_paths_follow_farense_home(tmp_path):
    settings = DataSettings.load()
    assert settings.farense_home == tmp_path / "home"
    assert settings.home.database == tmp_path / "home" / "farense.db"
    assert settings.home.datasets == tmp_path / "home" / "datasets"
    assert settings.seed_dir == PACKAGE_SEED_DIR
    assert PACKAGE_SEED_DIR.parent == Path(__file__).resolve().parent.parent / "data"
    assert (settings.valid_fraction, settings.test_fraction, settings.split_salt) == (0.1, 0.1, "farense")


def test_environment_and_dotenv_override_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_PATH", "~/elsewhere/x.db")
    (tmp_path / ".env").write_text("VALID_FRACTION=0.25\nSPLIT_SALT=pepper\nUNRELATED=1\n")
    settings = DataSettings.load()
    assert settings.home.database == Path.home() / "elsewhere" / "x.db"
    assert settings.valid_fraction == 0.25
    assert settings.split_salt == "pepper"


def test_overrides_win_over_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATASETS_DIR", str(tmp_path / "from-env"))
    settings = DataSettings.load(datasets_dir=tmp_path / "explicit")
    assert settings.home.datasets == tmp_path / "explicit"


def test_one_line_per_bad_setting_naming_the_variable(monkeypatch):
    monkeypatch.setenv("VALID_FRACTION", "2")
    monkeypatch.setenv("TEST_FRACTION", "abc")
    with pytest.raises(SettingsError) as caught:
        DataSettings.load()
    lines = str(caught.value).splitlines()
    assert lines == [
        "invalid settings:",
        "VALID_FRACTION: Input should be less than or equal to 0.5 (got '2')",
        "TEST_FRACTION: Input should be a valid number, unable to parse string as a number (got 'abc')",
    ]
    assert isinstance(caught.value, ValueError)


def test_fractions_must_leave_room_for_training():
    with pytest.raises(SettingsError, match="VALID_FRACTION \\+ TEST_FRACTION"):
        DataSettings.load(valid_fraction=0.5, test_fraction=0.5)


def test_valid_fraction_cannot_be_zero():
    with pytest.raises(SettingsError, match="\nVALID_FRACTION: Input should be greater than 0"):
        DataSettings.load(valid_fraction=0)
