"""Warm-started nightly training on the tiny llama: a night continues the production adapter on the
curated examples it has not seen plus a replay sample, with the step budget they call for; a changed
basis (shipped knowledge, LoRA layout, ...), RETRAIN_MODE=full or --full trains from scratch; a
night with nothing new is skipped; the registry says which it was and why."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data.builder import build_dataset
from data.knowledge import PACKAGE_KNOWLEDGE_DIR, add_fact, seed_knowledge
from data.settings import DataSettings
from data.store import Store
from inference.settings import InferenceSettings
from training.lifecycle.messages import Note
from training.lifecycle.pipeline import pipeline_state, run_pipeline
from training.lifecycle.registry import Registry
from training.lifecycle.settings import LifecycleSettings
from training.lifecycle.warmstart import FULL, WARM, plan_training, training_basis
from training.runs import Run
from training.settings import TrainingSettings

from .helpers import TRAIN_ARGS, adapter, lifecycle_env, write_seed
from .models import make_adapter

META = dict(model_id="tiny", adapter_version="v0001", latency_s=0.1, prompt_tokens=1, completion_tokens=1)
VOTES = (  # (fan, question, answer they liked), three fans: FEEDBACK_PER_USER is 3
    (101, "So when was Farense founded, then?", "Farense was founded in 1910."),
    (101, "E o Farense foi fundado quando mesmo?", "O Farense foi fundado em 1910."),
    (102, "Which town do Farense play for?", "Farense is the club of Faro."),
    (102, "Qual é a cidade do Farense, afinal?", "O Farense é de Faro."),
    (103, "What colours do the Farense shirts have?", "Farense play in black and white."),
    (103, "De que cor é a camisola do Farense?", "O Farense joga de preto e branco."),
)


@pytest.fixture
def home(monkeypatch, tmp_path, tiny_model_dir, isolated_env):
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    return isolated_env


def vote(home: Path) -> None:
    with Store(home / "farense.db") as store:
        for fan, question, answer in VOTES:
            store.set_feedback(store.log_message(fan, fan, question, answer, **META), fan, 1)


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_night_continues_production_on_the_new_examples_and_a_replay_sample(home):
    first = run_pipeline(trigger="nightly", requested_by="scheduler", train_args=TRAIN_ARGS)
    assert first.outcome == "promoted" and first.version == "v0001", first.message
    v1 = Registry(home).get("v0001")
    assert v1.training["mode"] == FULL and v1.training["reason"] == "no production adapter to continue"
    assert v1.training["basis"]["shipped_knowledge"] and v1.training["curated_until"] is None
    assert "Full training (no production adapter to continue)." in first.message

    quiet = run_pipeline(trigger="nightly", requested_by="scheduler", skip_if_unchanged=True, train_args=TRAIN_ARGS)
    assert quiet.outcome == "skipped" and "nothing new to learn" in quiet.message, quiet.message
    assert quiet.training["mode"] == WARM and [v.version for v in Registry(home).versions()] == ["v0001"]

    vote(home)
    events: list[dict] = []
    # learning rate 0: the candidate keeps the weights it started from; evaluated once, at its last step
    night = run_pipeline(
        trigger="nightly",
        requested_by="scheduler",
        on_progress=events.append,
        skip_if_unchanged=True,
        train_args=[*TRAIN_ARGS, "--learning-rate", "0", "--eval-every", "1000"],
    )

    assert night.version == "v0002", night.message
    v2 = Registry(home).get("v0002")
    plan = v2.training
    assert plan["mode"] == WARM and plan["start_version"] == "v0001" and plan["start_adapter"] == str(v1.path)
    assert pipeline_state(home)["last"]["training"]["mode"] == WARM
    for name, value in adapter(v1.path).items():  # it started from production's weights, not fresh ones
        assert np.array_equal(np.array(adapter(v2.path)[name]), np.array(value)), name

    warm_dataset = Path(Run(v2.run_dir).config()["dataset"]["path"])
    full_dataset = Path(json.loads((warm_dataset / "manifest.json").read_text())["parent"]["path"])
    full_train, warm_train = lines(full_dataset / "train.jsonl"), lines(warm_dataset / "train.jsonl")
    new = [line for line in full_train if json.loads(line).get("source") == "feedback"]
    rest = [line for line in full_train if line not in new]
    assert 0 < len(new) <= len(VOTES) and plan["new_examples"] == len(new)
    assert warm_train[: len(new)] == new  # every new example ...
    replayed = warm_train[len(new) :]  # ... and a replay sample of the rest, without repeats
    assert len(replayed) == len(set(replayed)) == plan["replay_examples"] and set(replayed) <= set(rest)
    # WARM_REPLAY_RATIO 2, WARM_EPOCHS 4, WARM_MIN_STEPS 10, batch 4 (TRAIN_ARGS)
    assert len(replayed) == max(2 * len(new), math.ceil(10 * 4 / 4) - len(new))
    steps = min(60, max(10, math.ceil(4 * (len(new) + len(replayed)) / 4)))
    start = next(e for e in events if e["event"] == "start")
    assert plan["steps"] == steps == start["total"] == v2.metrics["step"]
    assert (warm_dataset / "valid.jsonl").read_bytes() == (full_dataset / "valid.jsonl").read_bytes()
    assert f"Warm start from v0001: {len(new)} new examples + {len(replayed)} replayed, {steps} steps." in (
        night.message
    )

    asked = run_pipeline(trigger="admin", requested_by="admin 42", train_args=TRAIN_ARGS, full=True)
    v3 = Registry(home).get(asked.version)
    assert v3.training["mode"] == FULL and v3.training["reason"] == "a full run was asked for", asked.message
    trained_on = Path(Run(v3.run_dir).config()["dataset"]["path"]) / "manifest.json"  # all of it, from scratch
    assert (
        json.loads(trained_on.read_text())["content_hash"]
        == json.loads((full_dataset / "manifest.json").read_text())["content_hash"]
    )


@pytest.fixture
def planning(home, tiny_model_dir, tmp_path):
    """A production adapter trained on this home's basis, and a way to plan tonight's training."""
    data_settings = DataSettings.load()
    Store(data_settings.home.database).close()
    registry = Registry(home)

    def plan(production=None, training=None, **options):
        build = build_dataset(data_settings)
        return plan_training(
            production,
            build.manifest,
            build.path,
            training or TrainingSettings.load(),
            LifecycleSettings.load(),
            InferenceSettings.load(),
            **options,
        )

    basis = plan().basis
    entry = registry.add_candidate(
        make_adapter(tiny_model_dir, tmp_path / "adapter"), training={"mode": FULL, "basis": basis}
    )
    registry.promote(entry.version, by="test", reason="setup")
    return registry.production(), plan


def test_a_new_knowledge_release_makes_the_night_a_full_one_but_an_admins_edit_does_not(
    planning, home, tmp_path, monkeypatch
):
    production, plan = planning
    vote(home)
    assert plan(production).mode == WARM

    with Store(home / "farense.db") as store:
        add_fact(store, "O Farense estreou um equipamento dourado em 2099.", "pt", author_id=5001)
    assert plan(production).mode == WARM  # /correct and /facts change the knowledge base every day

    release = tmp_path / "release"
    release.mkdir()
    for path in PACKAGE_KNOWLEDGE_DIR.iterdir():
        (release / path.name).write_bytes(path.read_bytes())
    (release / "synonyms.en.jsonl").write_text(json.dumps({"lang": "en", "words": ["lads"], "means": ["team"]}) + "\n")
    monkeypatch.setattr(Store, "seed_knowledge", lambda store: seed_knowledge(store, release))  # an upgrade ships it

    full = plan(production)
    assert full.mode == FULL and full.new_examples == 0
    assert full.reason.text("en") == "knowledge base release (seed facts or lexicon) changed since v0001 was trained"
    assert full.reason.text("pt") == (
        "mudou desde o treino de v0001: versão da base de conhecimento (factos de base ou léxico)"
    )
    assert full.run_flags() == ["--dataset", str(full.dataset)]


def test_after_the_gate_refuses_a_full_run_on_a_new_release_the_nights_continue_production(
    planning, home, tmp_path, tiny_model_dir, monkeypatch
):
    production, plan = planning
    vote(home)
    release = tmp_path / "release"
    release.mkdir()
    for path in PACKAGE_KNOWLEDGE_DIR.iterdir():
        (release / path.name).write_bytes(path.read_bytes())
    (release / "synonyms.en.jsonl").write_text(json.dumps({"lang": "en", "words": ["lads"], "means": ["team"]}) + "\n")
    monkeypatch.setattr(Store, "seed_knowledge", lambda store: seed_knowledge(store, release))
    registry = Registry(home)
    full = plan(production, registered=registry.versions())
    assert full.mode == FULL

    tried = registry.add_candidate(
        make_adapter(tiny_model_dir, tmp_path / "tried", seed=2), training={"mode": FULL, "basis": full.basis}
    )
    registry.record_gate(tried.version, {"accepted": False}, accepted=False)
    warm = plan(production, registered=registry.versions())
    assert warm.mode == WARM and warm.start_version == production.version and warm.new_examples > 0
    assert warm.basis == full.basis  # a promoted candidate of tonight's records the new basis
    assert warm.reason.text("en") == "continuing v0001: the gate refused a full run on the current basis (v0002)"

    assert plan(production, registered=registry.versions(), force_full=Note("reason_asked")).mode == FULL
    wider = plan(production, TrainingSettings.load(lora_rank=16), registered=registry.versions())
    assert wider.mode == FULL  # new weight shapes cannot be continued, refused or not


def test_full_when_asked_or_when_the_lora_layout_or_the_recorded_basis_differ(
    planning, home, tiny_model_dir, tmp_path, monkeypatch
):
    production, plan = planning
    vote(home)
    warm = plan(production)
    assert warm.mode == WARM and warm.new_examples > 0
    assert warm.run_flags()[2:6] == ["--init-adapter", str(production.path), "--iters", str(warm.steps)]
    assert "--learning-rate" not in warm.run_flags()  # the training's own
    monkeypatch.setenv("WARM_LEARNING_RATE", "5e-5")
    assert plan(production).run_flags()[-2:] == ["--learning-rate", "5e-05"]
    monkeypatch.delenv("WARM_LEARNING_RATE")

    assert plan(production, force_full=Note("reason_setting")).reason.text("en") == "RETRAIN_MODE=full is set"
    wider = plan(production, TrainingSettings.load(lora_rank=16))
    assert wider.mode == FULL and wider.reason.text("en") == "LoRA layout changed since v0001 was trained"

    registry = Registry(home)
    older = registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "older"))
    registry.promote(older.version, by="test", reason="an adapter from before warm starts")
    assert plan(registry.production()).reason.text("en") == (
        "v0002 records no training basis (registered before warm starts)"
    )
    assert plan(None).reason.text("en") == "no production adapter to continue"


def test_the_basis_names_the_base_model_by_its_weights(home, tiny_model_dir):
    basis = training_basis({}, None, TrainingSettings.load(), InferenceSettings.load())
    assert basis["base_model"]["name"] == tiny_model_dir.name
    assert list(basis["base_model"]["weights"]) == ["model.safetensors"]
    assert basis["lora"]["num_layers"] == 2  # the default 16, clamped to the tiny llama's blocks
    assert "self_attn.q_proj" in basis["lora"]["keys"] and "mlp.down_proj" in basis["lora"]["keys"]
