"""The factory adapter: a fresh home serves it from the first answer and gates nightly candidates
against it; a base model without one trains its first adapter right after the bot starts."""

from __future__ import annotations

import json
import time

import pytest

from bot.retraining import FIRST_JOB_ID, install_factory
from inference.engine import Engine
from inference.settings import InferenceSettings
from training.lifecycle import factory
from training.lifecycle.factory import MANIFEST, install_factory_adapter, write_factory_adapter
from training.lifecycle.registry import Registry

from .helpers import BOT_ADMIN
from .models import make_adapter


@pytest.fixture
def shipped(tmp_path, tiny_model_dir, monkeypatch):
    """A factory adapter for the tiny model, written from a version gated in another home."""
    elsewhere = Registry(tmp_path / "build-home", base_model=tiny_model_dir)
    entry = elsewhere.add_candidate(
        make_adapter(tiny_model_dir, tmp_path / "trained"),
        manifest={"content_hash": "d" * 64, "knowledge_hash": "k" * 64, "splits": {"train": {"count": 5}}},
        metrics={"best_val_loss": 1.25},
    )
    elsewhere.record_gate(entry.version, {"accepted": True, "criteria": [], "answers": [{"id": "x"}]}, True)
    root = tmp_path / "factory"
    monkeypatch.setattr(factory, "FACTORY_ROOT", root)
    folder = write_factory_adapter(entry, tiny_model_dir, {"adapter+retrieval+guard": {"accuracy": 0.5}}, root)
    return folder


def test_a_fresh_home_serves_the_factory_adapter_from_the_first_answer(
    shipped, tiny_model_dir, isolated_env, monkeypatch
):
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    manifest = json.loads((shipped / MANIFEST).read_text())
    assert manifest["base_model"] == tiny_model_dir.name and "answers" not in manifest["gate"]
    engine = Engine(InferenceSettings.load(max_tokens=4))
    try:
        assert engine.adapter_version is None
        assert install_factory(engine) == "v0001"
        assert engine.adapter_version == "v0001"  # served at once, no restart
    finally:
        engine.close()
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    production = registry.production()
    assert production.version == "v0001" and production.gate["accepted"]  # the champion nightly runs face
    assert production.record["dataset"]["content_hash"] == "d" * 64
    assert production.record["dataset"]["knowledge_hash"] == "k" * 64  # kept through factory.json
    assert production.trigger == "factory"
    assert production.record["metrics"] == {"best_val_loss": 1.25}
    assert registry.history()[-1]["by"] == "factory"
    assert install_factory_adapter(registry, tiny_model_dir) is None  # once: a home with versions keeps them


def test_other_weights_get_no_factory_adapter(shipped, tiny_model_dir, tmp_path, isolated_env):
    changed = tmp_path / "same-name" / tiny_model_dir.name
    changed.mkdir(parents=True)
    for file in tiny_model_dir.iterdir():
        changed.joinpath(file.name).write_bytes(file.read_bytes())
    weights = changed / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # e.g. another converter's layout
    assert install_factory_adapter(Registry(isolated_env, base_model=changed), changed) is None
    assert Registry(isolated_env, base_model=changed).versions() == []


def test_a_base_model_without_an_adapter_trains_its_first_right_after_start(start_bot, isolated_env, tiny_model_dir):
    bot = start_bot(first_training_at_start=True)

    def told() -> list[str]:
        return [c.params["text"] for c in bot.server.calls("sendMessage") if c.params["chat_id"] == BOT_ADMIN]

    deadline = time.monotonic() + 180
    while len(told()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    started, finished = told()[:2]
    assert started.startswith("No trained adapter for this base model yet: training the first one now")
    assert finished.startswith(("First adapter: promoted", "First adapter: rejected")), finished
    assert Registry(isolated_env, base_model=tiny_model_dir).versions()  # trained now, not at 03:00


def test_a_bot_with_an_adapter_does_not_train_at_start(start_bot, isolated_env, tiny_model_dir, tmp_path):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    registry.promote(
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "a")).version, by="test", reason="test"
    )
    bot = start_bot(first_training_at_start=True)
    assert bot.services.scheduler.get_job(FIRST_JOB_ID) is None
    assert bot.engine.adapter_version == "v0001"


def test_the_embedded_model_ships_a_factory_adapter_that_fits_it(default_model_dir, isolated_env):
    registry = Registry(isolated_env, base_model=default_model_dir)
    installed = install_factory_adapter(registry, default_model_dir)  # the repository's own, not a test copy
    assert installed is not None and installed.version == "v0001" and registry.production().version == "v0001"
    gate = installed.gate
    assert gate["accepted"] and gate["candidate"]["accuracy"] > gate["champion"]["accuracy"]
    assert gate["candidate"]["wrong_rate"] < gate["champion"]["wrong_rate"]


def test_a_fresh_home_plans_against_the_basis_the_factory_adapter_records(default_model_dir, isolated_env):
    """The factory adapter records the basis it was trained on (factory.json "training"): base
    weights, LoRA layout, formats, grounding settings, seed and shipped knowledge. A fresh home's
    night compares against it: warm when nothing changed since it was trained, else from scratch,
    naming what changed. It fits this base model as it was trained (the layout migration keeps it
    equivalent on converter 2's weights); what else changed since is the data's business: retraining
    the factory adapter on today's seed makes a fresh install's nights warm from the first."""
    import subprocess
    import sys
    from pathlib import Path

    from data.builder import build_dataset
    from data.settings import DataSettings
    from data.store import Store
    from training.lifecycle.settings import LifecycleSettings
    from training.lifecycle.warmstart import BASIS_PARTS, WARM, plan_training
    from training.settings import TrainingSettings

    registry = Registry(isolated_env, base_model=default_model_dir)
    production = install_factory_adapter(registry, default_model_dir)
    settings = DataSettings.load()
    Store(settings.home.database).close()
    build = build_dataset(settings)
    grounded = subprocess.run(
        [sys.executable, "-m", "training", "ground", "--events", str(build.path)], capture_output=True, text=True
    )
    assert grounded.returncode == 0, grounded.stderr
    dataset = Path(json.loads(grounded.stdout.splitlines()[-1])["path"])

    plan = plan_training(
        production, build.manifest, dataset, TrainingSettings.load(), LifecycleSettings.load(), InferenceSettings.load()
    )
    recorded = production.training["basis"]
    changed = [part for part in BASIS_PARTS if recorded[part] != plan.basis[part]]
    assert "base_model" not in changed and "lora" not in changed, changed
    assert (plan.mode == WARM) == (not changed), plan.reason.text("en")
    if changed:
        assert plan.reason.key == "reason_basis_changed", plan.reason.text("en")
