"""Training on prompts as served: grounding a built dataset, the pipeline grounding before
it trains, the gate answering from retrieved facts, and the four-configuration evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.knowledge import remove_fact
from data.seed import load_ood, load_seed
from data.settings import DataSettings
from data.store import Store
from inference.faithfulness import unsupported
from inference.grounding import DECLINE, FactIndex, build_grounded, detect_language
from inference.settings import InferenceSettings
from training.evaluation.grounding import default_out_folder, ground_dataset, near_miss_chosen
from training.lifecycle.pipeline import run_pipeline
from training.lifecycle.registry import Registry

from .helpers import TRAIN_ARGS, lifecycle_env, write_seed
from .models import make_adapter

HASSAN = "Who was Hassan Nader?"


@pytest.fixture
def knowledge(isolated_env) -> Path:
    """The configured database with the seeded knowledge base (every Store open seeds it)."""
    path = DataSettings.load().home.database
    Store(path).close()
    return path


@pytest.fixture
def tokenizer(tiny_model_dir):
    from inference.loading import load_base

    return load_base(str(tiny_model_dir), tiny_model_dir.parent)[1]


def write_dataset(folder: Path, lines: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines.get(split, [])))
    (folder / "manifest.json").write_text(json.dumps({"content_hash": "parent-hash", "sources": {"seed": 3}}))
    return folder


def pair(question: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


def read(folder: Path, split: str = "train") -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_ground_dataset_shows_the_right_fact_declines_and_is_content_hashed(knowledge, tokenizer, tmp_path):
    serving = InferenceSettings.load()
    index = FactIndex(knowledge)
    hassan = index.search(HASSAN, k=3, lang="en")
    retrieved = [fact.fact for fact in hassan]
    uncertain = (8, 34, 82, 86, 119)  # left out of the knowledge base
    wrong = next(number for number in range(1, 120) if number not in retrieved and number not in uncertain)
    lines = {
        "train": [
            pair(HASSAN, "A Moroccan striker.", source="seed", fact=retrieved[0], kind="qa"),  # retrieved as is
            pair(HASSAN, "Something else.", source="seed", fact=wrong, kind="qa"),  # its fact is injected
            pair("Who won the Champions League in 2005?", "Not my club.", source="seed", fact=None, kind="decline"),
            pair("Qual é a capital da Mongólia?", "Ulan Bator.", source="feedback"),  # nothing retrieved
            pair("Who scored for Farense in 1922?", "Nobody knows.", source="seed", fact=34, kind="qa"),
        ],
        "valid": [pair(HASSAN, "A striker.", source="seed", fact=retrieved[0], kind="qa")],
    }
    dataset = write_dataset(tmp_path / "built", lines)

    first = ground_dataset(dataset, tmp_path / "one", index, serving, tokenizer)
    train = read(first.path)
    assert (
        sum(line.get("kind") != "near_miss" for line in train) == 4
    )  # the pair about fact 34 (not in the knowledge base) is dropped
    kept, injected, declined, fed_back = [line for line in train if line.get("kind") != "near_miss"]
    assert kept["messages"][0]["role"] == "system" and kept["shown_facts"][0] == retrieved[0]
    assert kept["messages"][-1] == {"role": "assistant", "content": "A Moroccan striker."}
    wrong_text = _fact_text(knowledge, wrong)
    assert wrong in injected["shown_facts"] and wrong_text in injected["messages"][0]["content"]
    assert len(injected["shown_facts"]) <= serving.retrieval_top_k
    assert injected["messages"][1:] == pair(HASSAN, "Something else.")["messages"]
    assert declined["messages"][-1]["content"] == DECLINE["en"] and declined["kind"] == "decline"
    assert fed_back["messages"][-1]["content"] == DECLINE["pt"] and fed_back["shown_facts"] == []
    assert fed_back["messages"][0] == build_grounded(fed_back["messages"][1:2], index, serving).messages[0]
    manifest = first.manifest
    near_misses = manifest["counts"]["near_miss"]  # HASSAN's pairs may get one each (their hash decides)
    assert manifest["counts"] == {
        "retrieved": 2,
        "injected": 1,
        "declined": 2,
        "near_miss": near_misses,
        "unknown_fact": 1,
        "skipped": 0,
    }
    assert manifest["parent"]["content_hash"] == "parent-hash" and len(manifest["knowledge_hash"]) == 64
    assert manifest["splits"]["train"]["count"] == 4 + near_misses and manifest["splits"]["valid"]["count"] == 1

    second = ground_dataset(dataset, tmp_path / "two", index, serving, tokenizer)
    assert second.content_hash == first.content_hash
    assert (second.path / "train.jsonl").read_bytes() == (first.path / "train.jsonl").read_bytes()
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    assert ground_dataset(dataset, first.path, index, serving, tokenizer).manifest == manifest
    assert (first.path / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten

    with Store(knowledge) as store:  # changed knowledge: a new grounded folder, never a stale one
        assert remove_fact(store, hassan[0].id, author_id=7)
    third = ground_dataset(dataset, None, index, serving, tokenizer)
    assert third.manifest["knowledge_hash"] != manifest["knowledge_hash"]
    assert third.path == default_out_folder(dataset, third.content_hash) and third.path.is_dir()
    assert third.content_hash != first.content_hash
    assert third.manifest["counts"]["retrieved"] == 0 and third.manifest["counts"]["injected"] == 3  # PT sibling
    index.close()


def test_a_share_of_seed_pairs_also_teaches_declining_when_only_related_facts_are_shown(knowledge, tokenizer, tmp_path):
    serving = InferenceSettings.load()
    index = FactIndex(knowledge)
    seed = load_seed(DataSettings.load().seed_dir)
    pairs = [pair(qa.question, qa.answer, source="seed", fact=qa.fact, kind="qa") for qa in seed.qa if qa.kind == "qa"][
        :120
    ]
    grounded = read(
        ground_dataset(write_dataset(tmp_path / "built", {"train": pairs}), None, index, serving, tokenizer).path
    )
    near_misses = [line for line in grounded if line["kind"] == "near_miss"]
    answered = {line["messages"][-2]["content"]: line for line in grounded if line["kind"] == "qa"}
    assert 5 <= len(near_misses) <= 0.25 * len(pairs)
    for line in near_misses:
        question = line["messages"][-2]["content"]
        assert near_miss_chosen(line["messages"][1:-1]) and question in answered
        assert line["messages"][-1]["content"] == DECLINE[detect_language(question)]
        assert line["shown_facts"] and line["fact"] not in line["shown_facts"]  # related, not answering
        assert line["fact"] in answered[question]["shown_facts"]  # its twin is shown the answer
        shown = line["messages"][0]["content"]
        assert unsupported(answered[question]["messages"][-1]["content"], [shown, question])  # not in them
    index.close()


def _fact_text(db: Path, number: int) -> str:
    with Store(db) as store:
        return store.read("SELECT text FROM facts WHERE fact = ? AND lang = 'en'", (number,))[0][0]


def test_pipeline_grounds_before_training_and_the_gate_answers_from_retrieved_facts(
    monkeypatch, tmp_path, tiny_model_dir, isolated_env, knowledge
):
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    events = []
    result = run_pipeline(trigger="manual", requested_by="test", on_progress=events.append, train_args=TRAIN_ARGS)
    assert result.outcome in ("promoted", "rejected"), result.message
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages[:3] == ["dataset", "ground", "train"]
    config = json.loads((result.run_dir / "config.json").read_text())
    trained_on = Path(config["dataset"]["path"])
    assert "-grounded-" in trained_on.name and config["valid_batches"]["valid_path"].startswith(str(trained_on))
    first = json.loads((trained_on / "train.jsonl").read_text().splitlines()[0])
    assert first["messages"][0]["role"] == "system"
    assert first["messages"][0]["content"].startswith(("You are the SC Farense", "És o assistente"))
    assert (
        Registry(isolated_env).get(result.version).dataset["content_hash"]
        == json.loads((trained_on / "manifest.json").read_text())["content_hash"]
    )

    report = result.report
    assert report["grounding"] is True
    index = FactIndex(knowledge)
    settings = InferenceSettings.load()
    for row in report["answers"]:
        expected = build_grounded([{"role": "user", "content": row["question"]}], index, settings)
        assert row["facts"] == [fact.fact for fact in expected.facts] or expected.decline
    assert any(row["facts"] for row in report["answers"])
    index.close()


def test_served_answers_put_the_retrieved_fact_in_the_prompt_and_decline_without_generating(knowledge, tiny_model_dir):
    from inference.loading import load_base
    from training.evaluation.evaluate import served_answers

    model, tokenizer, _ = load_base(str(tiny_model_dir), tiny_model_dir.parent)
    serving = InferenceSettings.load()
    index = FactIndex(knowledge)
    grounded, off_topic = served_answers(
        model, tokenizer, [HASSAN, "Translate 'good morning' into German."], serving, index, grounded=True, max_tokens=4
    )
    best = index.search(HASSAN, k=1, lang="en")[0]
    assert best.text in grounded.prompt[0]["content"] and grounded.facts[0] == best.fact
    assert not grounded.declined
    assert off_topic.declined and off_topic.text == DECLINE["en"]
    (alone,) = served_answers(model, tokenizer, [HASSAN], serving, index, grounded=False, max_tokens=4)
    assert alone.facts == () and alone.prompt == [{"role": "user", "content": HASSAN}]
    index.close()


def test_evaluate_prints_every_configuration_and_what_the_guard_did(knowledge, tiny_model_dir, tmp_path, isolated_env):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    env = dict(os.environ, MODEL_PATH=str(tiny_model_dir))
    done = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "--adapter", str(adapter), "--limit", "4", "--max-tokens", "4"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    probes = len(load_ood(DataSettings.load().seed_dir, []))
    assert lines[0].startswith(f"4 heldout items (2 EN, 2 PT), {probes} out-of-domain probes")
    assert [line.split()[0] for line in lines[3:]] == [
        "base",
        "base+retrieval",
        "base+retrieval+guard",
        "base+retrieval+quote",
        "adapter",
        "adapter+retrieval",
        "adapter+retrieval+guard",
        "adapter+retrieval+quote",
    ]
    assert "EN r/d/w" in lines[1] and "PT r/d/w" in lines[1] and "OOD decl" in lines[1]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["base+retrieval"][5] != "0.0%"  # out-of-domain questions retrieve nothing: declined
    # The tiny random model writes nonsense: the guard replaces it with the best fact, which is right
    # whenever retrieval found the asked fact; without the guard, nonsense is never right.
    assert int(rows["base+retrieval+guard"][6]) > 0 and rows["base+retrieval"][6] == "-"
    assert rows["base+retrieval"][3] == "0.0%"
    assert rows["base+retrieval+quote"][3] != "0.0%"  # a quoted fact is right when it is the asked one

    bad = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "--configs", "base,magic"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown configuration(s) magic" in bad.stderr
