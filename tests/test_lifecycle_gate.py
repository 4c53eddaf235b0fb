"""The promotion gate on the tiny llama: a trained candidate beats the base model, a noisy one and a
NaN one are rejected with every criterion reported, one trained to decline on accuracy alone; plus the
eval subset and the repetition check.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from data.scorer import is_decline
from data.seed import load_eval
from data.settings import PACKAGE_SEED_DIR
from training.evaluation.gate import _criteria, degenerate, gate_items, gate_version
from training.lifecycle.registry import REJECTED, Registry
from training.lifecycle.settings import LifecycleSettings

from .helpers import LEARNING_TRAIN_ARGS, TRAIN_ARGS, lifecycle_env, trained_on_seed, write_seed
from .models import make_adapter

CRITERIA = {"val_loss", "accuracy", "wrong_rate", "adapter_loads", "finite_val_loss", "degenerate_answers"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One real training run (child process, like the pipeline's), shared by this module's tests."""
    root = tmp_path_factory.mktemp("trained")
    return trained_on_seed(write_seed(root / "seed"), root / "home", tiny_model_dir, TRAIN_ARGS)


@pytest.fixture
def registry(monkeypatch, tmp_path, tiny_model_dir, isolated_env) -> Registry:
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    return Registry(isolated_env)


def add_trained(registry: Registry, run: Path):
    manifest = json.loads((run / "manifest.json").read_text())
    return registry.add_candidate(
        run / "adapters" / "best", run_dir=run, manifest=manifest, metrics=json.loads((run / "status.json").read_text())
    )


def measured(accuracy: float, wrong_rate: float) -> dict:
    return {
        "val_loss": 1.0,
        "champion_val_loss": None,
        "accuracy": accuracy,
        "wrong_rate": wrong_rate,
        "error": None,
        "degenerate_share": 0.0,
    }


def test_a_candidate_that_answers_wrong_more_often_is_refused_even_when_it_is_right_more_often(isolated_env):
    settings = LifecycleSettings.load().model_copy(update={"gate_min_improvement": 0.0})
    champion = measured(accuracy=0.50, wrong_rate=0.10)  # declines the rest
    bolder = _criteria(measured(accuracy=0.55, wrong_rate=0.15), champion, settings)
    assert [row["name"] for row in bolder if not row["passed"]] == ["wrong_rate"]
    assert all(row["passed"] for row in _criteria(measured(accuracy=0.55, wrong_rate=0.10), champion, settings))
    tolerant = settings.model_copy(update={"gate_allowed_wrong_rise": 0.05})
    assert all(row["passed"] for row in _criteria(measured(accuracy=0.55, wrong_rate=0.15), champion, tolerant))


def test_a_candidate_that_is_right_less_often_is_refused_on_accuracy_alone(isolated_env):
    settings = LifecycleSettings.load().model_copy(update={"gate_min_improvement": 0.0})
    champion = measured(accuracy=0.50, wrong_rate=0.10) | {"val_loss": 1.2}
    weaker = _criteria(measured(accuracy=0.45, wrong_rate=0.10), champion, settings)  # better val loss
    assert [row["name"] for row in weaker if not row["passed"]] == ["accuracy"]
    assert all(row["passed"] for row in _criteria(measured(accuracy=0.50, wrong_rate=0.10), champion, settings))


def test_a_candidate_trained_to_decline_is_refused_on_accuracy_alone(
    registry, isolated_env, tiny_model_dir, tmp_path, monkeypatch
):
    """Real runs on the grounded seed: the champion learned its answers, the candidate to decline every
    question. A decline is never wrong and the candidate's own validation split (declines) praises it;
    when the champion's run is not on this machine (the factory adapter was trained elsewhere), no
    loss measures what the champion answered, and accuracy alone has to refuse it."""
    monkeypatch.delenv("ANSWER_FROM")  # served as by default: the fact the answer drew on, or its decline
    champion_run = trained_on_seed(
        Path(os.environ["SEED_DIR"]), isolated_env, tiny_model_dir, LEARNING_TRAIN_ARGS, grounded=True
    )
    champion = add_trained(registry, champion_run)
    registry.promote(champion.version, by="test", reason="the champion")
    declining = write_seed(tmp_path / "declining-seed", decline_answers=True)
    candidate_run = trained_on_seed(declining, isolated_env, tiny_model_dir, LEARNING_TRAIN_ARGS, grounded=True)
    candidate = add_trained(registry, candidate_run)
    shutil.rmtree(champion_run)  # as for a factory adapter: its run stayed where it was trained

    report = gate_version(registry, candidate.version)

    rows = {row["name"]: row for row in report["criteria"]}
    assert not report["accepted"] and [name for name, row in rows.items() if not row["passed"]] == ["accuracy"]
    assert report["reference_run"] is None and "champion_val_loss" not in rows
    assert rows["val_loss"]["candidate"] < rows["val_loss"]["champion"]  # its own split: declines
    answers = report["answers"]
    for side in ("champion", "candidate"):  # both accuracies are what their answers scored
        assert report[side]["accuracy"] == sum(answer[f"{side}_passed"] for answer in answers) / len(answers)
    assert 0 < report["champion"]["accuracy"] and report["candidate"]["accuracy"] < report["champion"]["accuracy"]
    assert report["candidate"]["wrong_rate"] <= report["champion"]["wrong_rate"]
    lost = [answer for answer in answers if answer["champion_passed"] and not answer["candidate_passed"]]
    assert lost and all(is_decline(answer["candidate"]) for answer in lost)
    stored = registry.get(candidate.version)
    assert stored.status == REJECTED and stored.gate["criteria"] == report["criteria"]
    assert registry.production().version == champion.version


def test_gate_asks_dev_questions_not_held_out_ones(registry, trained_run):
    report = gate_version(registry, add_trained(registry, trained_run).version)
    dev = {item.id for item in load_eval(Path(os.environ["SEED_DIR"]), [], "dev")}
    assert report["answers"] and {answer["id"] for answer in report["answers"]} <= dev


def test_trained_candidate_passes_then_noisy_candidate_is_rejected(registry, trained_run, tiny_model_dir, tmp_path):
    first = add_trained(registry, trained_run)
    report = gate_version(registry, first.version)
    assert report["accepted"], report["criteria"]
    assert report["champion"]["label"] == "base model" and report["candidate"]["version"] == first.version
    assert report["candidate"]["val_loss"] < report["champion"]["val_loss"]
    assert registry.get(first.version).gate["accepted"] is True
    registry.promote(first.version, by="test", reason="passed the gate")

    noisy = make_adapter(tiny_model_dir, tmp_path / "noisy", rank=8, num_layers=2, seed=5, scale=200.0)
    second = registry.add_candidate(noisy, run_dir=trained_run)
    report = gate_version(registry, second.version)
    assert not report["accepted"]
    assert {row["name"] for row in report["criteria"]} == CRITERIA
    for row in report["criteria"]:  # both values and the rule, for every criterion
        assert row["candidate"] is not None and row["champion"] is not None and row["rule"]
    val = next(row for row in report["criteria"] if row["name"] == "val_loss")
    assert not val["passed"] and val["candidate"] > val["champion"]
    assert report["champion"]["version"] == first.version
    assert len(report["answers"]) == report["eval_items"] == 4
    stored = registry.get(second.version)
    assert stored.status == REJECTED and stored.gate["criteria"] == report["criteria"]
    assert registry.production().version == first.version  # the gate never promotes


def test_nan_adapter_is_rejected_by_the_sanity_checks(registry, trained_run, tiny_model_dir, tmp_path):
    import mlx.core as mx

    folder = make_adapter(tiny_model_dir, tmp_path / "nan", rank=8, num_layers=2)
    weights = mx.load(str(folder / "adapters.safetensors"))
    mx.save_safetensors(
        str(folder / "adapters.safetensors"), {name: value * float("nan") for name, value in weights.items()}
    )
    candidate = registry.add_candidate(folder, run_dir=trained_run)  # well-formed, so registered
    report = gate_version(registry, candidate.version)
    rows = {row["name"]: row for row in report["criteria"]}
    assert not report["accepted"]
    assert not rows["adapter_loads"]["passed"] and "non-finite" in rows["adapter_loads"]["candidate"]
    assert not rows["finite_val_loss"]["passed"] and not rows["degenerate_answers"]["passed"]
    assert rows["adapter_loads"]["champion"] == "ok" and rows["val_loss"]["champion"] > 0
    assert registry.get(candidate.version).status == REJECTED


def test_eval_subset_is_balanced_spread_and_stable():
    items = load_eval(PACKAGE_SEED_DIR, [])
    chosen = gate_items(items, 60)
    assert len(chosen) == 60 and chosen == gate_items(list(reversed(items)), 60)
    assert sum(item.lang == "en" for item in chosen) == 30
    facts = sorted(item.fact for item in chosen if item.lang == "pt")
    assert facts[0] <= 5 and facts[-1] >= 110  # spread over the whole fact range, not the first 30
    english_only = [item for item in items if item.lang == "en"][:3]
    assert len(gate_items(english_only + [i for i in items if i.lang == "pt"], 10)) == 10  # pt fills in


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("", "empty"),
        ("  \n\n ", "empty"),
        ("Council Council Council Council Council Council Council Council Council", "repetitive"),
        ("the club of the club of the club of the club of Faro", "repetitive"),
        ("'):'):'):'):'):'):'):'):'):'):'):'):'):'):'):'):'):'):", "repetitive"),
        ("Farense was founded on 1 April 1910 in Faro, in the Algarve.", None),
        (
            "O Farense foi fundado a 1 de abril de 1910, em Faro, no Algarve. Joga no Estádio de São Luís, "
            "com capacidade para cerca de 7000 espectadores, e o seu equipamento é preto e branco.",
            None,
        ),
    ],
)
def test_degenerate_answers_are_recognised(text, verdict):
    assert degenerate(text) == verdict


def test_the_gate_runs_when_the_champions_dataset_was_deleted(registry, trained_run, tmp_path):
    """Retention and /forget delete datasets; the champion's run then has no validation set to read."""
    import shutil

    champion_run = tmp_path / "champion-run"
    shutil.copytree(trained_run, champion_run)
    valid = tmp_path / "forgotten-dataset" / "valid.jsonl"
    valid.parent.mkdir()
    config = json.loads((champion_run / "config.json").read_text())
    shutil.copyfile(config["valid_batches"]["valid_path"], valid)
    config["valid_batches"]["valid_path"] = str(valid)
    (champion_run / "config.json").write_text(json.dumps(config))
    champion = add_trained(registry, champion_run)
    registry.promote(champion.version, by="test", reason="the champion")
    shutil.rmtree(valid.parent)  # a /forget deleted the dataset it was trained on

    candidate = add_trained(registry, trained_run)
    report = gate_version(registry, candidate.version)

    assert report["champion"]["version"] == champion.version and "criteria" in report
