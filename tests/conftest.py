"""Shared fixtures: the real default model (fetched and converted once per machine) and a tiny llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import inference  # noqa: F401  (preloads the optimized BLAS before anything imports mlx)
from inference.modelstore import ensure_default_model

from .models import make_tiny_model

# Converted models survive between runs: fetching and converting SmolLM2 takes ~15 s.
MODELS_CACHE = Path(os.environ.get("FARENSE_TEST_MODELS", Path.home() / ".cache" / "farense-tests" / "models"))


@pytest.fixture(scope="session")
def models_root() -> Path:
    MODELS_CACHE.mkdir(parents=True, exist_ok=True)
    return MODELS_CACHE


@pytest.fixture(scope="session")
def default_model_dir(models_root: Path) -> Path:
    return ensure_default_model(models_root)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, models_root):
    """Every test gets its own FARENSE_HOME and cwd, so no developer `.env` or state leaks in."""
    home = tmp_path / "farense-home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith(("TELEGRAM_", "ADMIN_", "MODEL_", "ADAPTER_", "TRAIN_", "BOT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FARENSE_HOME", str(home))
    monkeypatch.setenv("MODELS_DIR", str(models_root))
    monkeypatch.chdir(tmp_path)
    return home
