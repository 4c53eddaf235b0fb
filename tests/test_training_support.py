"""Shared helpers for the training tests (no tests here): small datasets, in-process and CLI runs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

WORDS = ("lions faro black white stadium sao luis algarve founded nineteen ten cup final league "
         "promotion coach captain goal season olhanense rival estadio").split()


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_dataset(folder: Path, *, train: int = 20, valid: int = 8, seed: int = 0,
                  min_words: int = 2, max_words: int = 30) -> Path:
    """A memorisable Q/A set with answers of very different lengths, plus a manifest."""
    rng = random.Random(seed)
    rows = [chat(f"Tell me fact {i} about Farense?",
                 " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + ".")
            for i in range(train + valid)]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", rows[:train])
    write_jsonl(folder / "valid.jsonl", rows[train:])
    digest = hashlib.sha256((folder / "train.jsonl").read_bytes() + (folder / "valid.jsonl").read_bytes())
    (folder / "manifest.json").write_text(json.dumps({"content_hash": digest.hexdigest()}))
    return folder


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "dataset")


@pytest.fixture
def tiny_env(monkeypatch, tiny_model_dir) -> dict:
    """MODEL_PATH = the tiny llama, for in-process runs and for `python -m training` children."""
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    return dict(os.environ)


def train_here(dataset: Path, *, resume: bool = False, run_id: str | None = None, **flags):
    """A run in this process (as `python -m training run` would do it); returns (Run, Outcome)."""
    from inference.settings import InferenceSettings
    from training.trainer.launch import launch
    from training.trainer.reporting import Reporter
    from training.settings import TrainingSettings

    settings = TrainingSettings.load(dataset=dataset, **flags)
    return launch(settings, InferenceSettings.load(), resume=resume, run_id=run_id, reporter=Reporter(False))


def cli(*args: str, env: dict | None = None, cwd: Path | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env if env is not None else dict(os.environ))


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "training", *map(str, args)]


def clean_env(home: Path, models_root: Path, model_dir: Path) -> dict:
    """For children started outside a test's isolated_env: no developer TRAIN_/MODEL_ settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAIN_", "MODEL_", "ADAPTER_", "FARENSE_", "SYSTEM_PROMPT"))}
    return env | {"FARENSE_HOME": str(home), "MODELS_DIR": str(models_root), "MODEL_PATH": str(model_dir)}


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def mark(run_dir: Path, state: str) -> None:
    """Pretend a finished run was interrupted, to exercise --resume without waiting for a signal."""
    path = Path(run_dir) / "status.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"state": state}))


def metrics(run_dir: Path, kind: str) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["kind"] == kind]


def adapter(folder: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(Path(folder) / "adapters.safetensors"))
