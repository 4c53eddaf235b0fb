"""Corruption: damaged adapters, configs, pointers, checkpoints, database rows and JSONL lines.

Each is detected and reported with a message naming the file, never registered, promoted or
loaded, and the bot keeps serving the last good adapter.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import struct
from pathlib import Path

import pytest

from common.home import Home
from data.builder import build_dataset
from data.settings import DataSettings
from inference.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterError
from inference.engine import Engine
from inference.settings import InferenceSettings
from training import runs
from training.lifecycle.pipeline import run_pipeline
from training.lifecycle.registry import Registry
from training.trainer import checkpoint

from .helpers import BOT_ADMIN, lifecycle_env, train_here, write_dataset, write_seed
from .models import make_adapter

pytestmark = pytest.mark.usefixtures("roomy_server")  # bursts of requests need a listen backlog

USER, OTHER = 4242, 4343
QUESTION = "Quando foi fundado o Farense?"


def _header(folder: Path, header: bytes) -> None:
    (folder / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)


def _config(folder: Path, change) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps(change(config)))


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def _nan(folder: Path) -> None:
    import mlx.core as mx

    weights = mx.load(str(folder / WEIGHTS_FILE))
    mx.save_safetensors(str(folder / WEIGHTS_FILE), {k: v * float("nan") for k, v in weights.items()})


# name -> (damage(folder), what the message says). All are refused before any weight is loaded,
# except the last three: well-formed files that do not fit, or hold NaN, refused when applied.
CORRUPTIONS = {
    "weights: empty file": (lambda f: (f / WEIGHTS_FILE).write_bytes(b""), "not a safetensors file"),
    "weights: 5 bytes": (lambda f: (f / WEIGHTS_FILE).write_bytes(b"\1\2\3\4\5"), "not a safetensors file"),
    "weights: random garbage": (
        lambda f: (f / WEIGHTS_FILE).write_bytes(random.Random(7).randbytes(4096)),
        "corrupt safetensors header",
    ),
    "weights: truncated by half": (_truncate, "truncated"),
    "weights: missing": (lambda f: (f / WEIGHTS_FILE).unlink(), "is missing"),
    "weights: header length past the end": (
        lambda f: (f / WEIGHTS_FILE).write_bytes(struct.pack("<Q", 10_000) + b"{}"),
        "corrupt safetensors header",
    ),
    "weights: header not an object": (lambda f: _header(f, b'["a", 1]'), "header is not a JSON object"),
    "weights: offsets not numbers": (
        lambda f: _header(f, b'{"x.lora_a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}'),
        "corrupt entry for tensor 'x.lora_a'",
    ),
    "weights: infinite shape": (
        lambda f: _header(f, b'{"x.lora_a": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 4]}}'),
        "corrupt entry for tensor 'x.lora_a'",
    ),
    "weights: no LoRA tensors": (
        lambda f: _header(f, b'{"x.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'),
        "holds no LoRA tensors",
    ),
    "config: missing": (lambda f: (f / CONFIG_FILE).unlink(), "adapter_config.json is missing"),
    "config: not JSON": (lambda f: (f / CONFIG_FILE).write_text('{"num_layers": 2,'), "is not valid JSON"),
    "config: a JSON list": (lambda f: (f / CONFIG_FILE).write_text("[2, 4]"), "is not a JSON object"),
    "config: no lora_parameters": (lambda f: _config(f, lambda c: {"num_layers": 2}), "lacks a valid"),
    "config: rank 0": (
        lambda f: _config(f, lambda c: c | {"lora_parameters": c["lora_parameters"] | {"rank": 0}}),
        "rank of at least 1",
    ),
    "config: more layers than the model": (lambda f: _config(f, lambda c: c | {"num_layers": 5}), "5 layers"),
    "config: rank not that of the weights": (
        lambda f: _config(f, lambda c: c | {"lora_parameters": c["lora_parameters"] | {"rank": 8}}),
        "does not fit the base model",
    ),
    "weights: NaN values": (_nan, "non-finite"),
}
FIT_ONLY = ("config: more layers than the model", "config: rank not that of the weights", "weights: NaN values")


def damaged(model: Path, folder: Path, kind: str) -> Path:
    adapter = make_adapter(model, folder, rank=4, num_layers=2)
    CORRUPTIONS[kind][0](adapter)
    return adapter


@pytest.mark.parametrize("kind", [k for k in CORRUPTIONS if k != "weights: NaN values"])
def test_a_damaged_adapter_is_never_registered_nor_promoted(kind, isolated_env, tiny_model_dir, tmp_path):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    with pytest.raises(AdapterError) as refused:
        registry.add_candidate(damaged(tiny_model_dir, tmp_path / "new", kind))
    assert CORRUPTIONS[kind][1] in str(refused.value)
    assert str(tmp_path / "new") in str(refused.value) or "the base model tiny-llama has 2" in str(refused.value)
    assert registry.versions() == []

    # The same damage to a version already registered: promotion re-verifies and refuses it.
    v1, v2 = (
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / f"good{s}", seed=s)).version for s in (1, 2)
    )
    registry.promote(v1, by="test", reason="setup")
    CORRUPTIONS[kind][0](registry.root / v2)
    with pytest.raises(AdapterError) as refused:
        registry.promote(v2, by="test", reason="damaged")
    assert v2 in str(refused.value)
    assert registry.production().version == v1 and [h["version"] for h in registry.history()] == [v1]


def test_the_bot_keeps_serving_the_last_good_adapter_whatever_the_pointer_names(
    start_bot, isolated_env, tiny_model_dir, tmp_path, caplog
):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    for seed in (1, 2):
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / f"good{seed}", seed=seed))
    registry.promote("v0001", by="test", reason="setup")
    bot = start_bot(rate_limit_per_minute=1000, updates_per_minute=1000, max_tokens=4)
    pointer = Home(isolated_env).production_pointer

    def asked(text: str):
        bot.engine._pointer_checked = float("-inf")  # look at the pointer before this question
        final = bot.ask(USER, USER, text)
        return bot.store.message_by_telegram_id(USER, final.response["result"]["message_id"])

    assert asked("Quem foi Hassan Nader?").adapter_version == "v0001"  # in the knowledge base: the model answers
    for number, kind in enumerate(CORRUPTIONS):
        broken = damaged(tiny_model_dir, isolated_env / "adapters" / f"broken{number}", kind)
        pointer.write_text(json.dumps({"version": f"broken{number}", "path": str(broken)}))
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="inference.engine"):
            row = asked("Quem foi Hassan Nader?")
        assert row.adapter_version == "v0001", kind
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "still serving v0001" in errors[0] and CORRUPTIONS[kind][1] in errors[0], errors
    for torn in ("[]", '{"version": "v0002"}', '{"version": "v0002", "pa'):
        pointer.write_text(torn)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="inference.engine"):
            assert asked("Quando foi fundado o Farense?").adapter_version == "v0001"
        assert f"{pointer} is corrupt" in caplog.text and "still serving v0001" in caplog.text

    since = len(bot.server.calls())
    bot.server.push_message(BOT_ADMIN, BOT_ADMIN, "/status", language_code="en")
    bot.settle()
    status = bot.server.wait_for("sendMessage", since=since).params["text"]
    assert "Adapter served: v0001" in status and "Adapter in production: unreadable" in status
    registry.promote("v0002", by="admin", reason="repair the pointer")  # what the error tells to do
    assert asked("Qual é o estádio do Farense?").adapter_version == "v0002"
    assert bot.store.counts()["messages"] == len(CORRUPTIONS) + 5  # every question answered and logged


def test_a_damaged_production_adapter_at_start_serves_the_base_model_and_says_why(
    isolated_env, tiny_model_dir, tmp_path, caplog
):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    for seed in (1, 2):
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / f"good{seed}", seed=seed))
    registry.promote("v0001", by="test", reason="setup")
    registry.promote("v0002", by="test", reason="setup")
    settings = InferenceSettings.load(model_path=str(tiny_model_dir), temperature=0.0, max_tokens=4)
    for kind in ("weights: truncated by half", "config: rank not that of the weights"):
        CORRUPTIONS[kind][0](registry.root / "v0002")  # the disk went bad under production
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="inference.engine"):
            engine = Engine(settings)
        try:
            assert engine.adapter_version is None and engine.generate([{"role": "user", "content": "Olá"}]).text
            assert "production adapter is unusable, serving the base model" in caplog.text
            # A registered version's files are checked against their sha256 before they are parsed.
            assert "v0002: " in caplog.text and "changed since it was registered" in caplog.text
            with pytest.raises(AdapterError):
                Engine(InferenceSettings.load(model_path=str(tiny_model_dir), adapter_path=registry.root / "v0002"))
        finally:
            engine.close()
        make_adapter(tiny_model_dir, registry.root / "v0002", seed=2)  # the same bytes again
    # The admin's way out: roll back, which skips versions that no longer verify.
    CORRUPTIONS["weights: truncated by half"][0](registry.root / "v0002")
    assert registry.rollback(by="admin", reason="v0002 is damaged").version == "v0001"
    engine = Engine(settings)
    try:
        assert engine.adapter_version == "v0001"
    finally:
        engine.close()


def test_torn_history_line_is_skipped_and_said(isolated_env, tiny_model_dir, tmp_path, caplog):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    registry.promote(
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "a")).version, by="test", reason="setup"
    )
    with open(registry.root / "history.jsonl", "a") as handle:
        handle.write('{"at": "2026-01-01T03:00:00+0000", "action": "prom')  # a crash mid-append
    with caplog.at_level(logging.WARNING, logger="training.lifecycle.registry"):
        assert [h["version"] for h in registry.history()] == ["v0001"]
    assert "history.jsonl line 2 is not JSON" in caplog.text


def test_a_run_whose_checkpoints_are_all_corrupt_is_not_resumed_but_trained_afresh(
    monkeypatch, tmp_path, tiny_model_dir, isolated_env, caplog
):
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    args = ["--iters", "4", "--batch-size", "2", "--val-batches", "2", "--eval-every", "2", "--checkpoint-every", "2"]
    interrupted, _ = train_here(
        write_dataset(tmp_path / "dataset"), iters=4, batch_size=2, val_batches=2, eval_every=2, checkpoint_every=2
    )
    status = json.loads((interrupted.dir / "status.json").read_text())
    (interrupted.dir / "status.json").write_text(json.dumps(status | {"state": "failed"}))  # as if it crashed
    for folder in checkpoint.checkpoints(interrupted.checkpoints):
        (folder / "index.json").write_text("{garbage")
    events: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="training.lifecycle.pipeline"):
        result = run_pipeline(trigger="nightly", requested_by="scheduler", on_progress=events.append, train_args=args)
    assert f"cannot resume {interrupted.id}" in caplog.text and "checkpoint" in caplog.text
    assert result.outcome in ("promoted", "rejected"), result.message
    assert result.run_dir != interrupted.dir and runs.Run(result.run_dir).status()["state"] == "finished"
    assert [e["stage"] for e in events if e["event"] == "stage"][:4] == ["train", "dataset", "ground", "train"]


def test_corrupt_database_rows_are_reported_skipped_and_forgettable(start_bot, isolated_env, caplog):
    bot = start_bot(rate_limit_per_minute=1000, updates_per_minute=1000, max_tokens=4)
    answers = [bot.ask(USER, USER, f"Pergunta {n} sobre o Farense?") for n in range(3)]
    ids = [bot.store.message_by_telegram_id(USER, a.response["result"]["message_id"]).id for a in answers]
    for answer in answers:  # 👍 on all three: all would be training data
        bot.server.push_callback_query(
            USER,
            USER,
            answer.response["result"]["message_id"],
            answer.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
        )
    bot.settle()
    raw = sqlite3.connect(bot.store.path)
    raw.execute("UPDATE messages SET answer = x'00ff' WHERE id = ?", (ids[0],))  # a blob, not text
    raw.execute("UPDATE messages SET question = CAST(x'c328' AS TEXT) WHERE id = ?", (ids[1],))  # bad UTF-8
    raw.commit()
    raw.close()

    with caplog.at_level(logging.WARNING):
        build = build_dataset(DataSettings.load(), bot.store)
    problems = {p["line"]: p["reason"] for p in build.manifest["problems"] if "#messages" in p["file"]}
    assert problems == {
        ids[0]: "corrupt row: answer is b'\\x00\\xff'",
        ids[1]: "corrupt row: question is undecodable text",
    }
    assert build.manifest["sources"]["feedback"] == 1  # the intact one only
    since = len(bot.server.calls())
    bot.server.push_message(BOT_ADMIN, BOT_ADMIN, "/status", language_code="en")
    bot.settle()
    bot.server.push_message(USER, USER, "/forget", language_code="en")
    bot.settle()
    replies = [c.params["text"] for c in bot.server.calls()[since:] if c.method == "sendMessage" and c.ok]
    assert any(r.startswith("Model:") and "answers 3" in r for r in replies), replies
    assert any("questions and answers: 3" in r for r in replies)
    assert bot.store.counts()["messages"] == 0


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"question": "Q?", "answer": "A."', "bad JSON"),
        (b'["Q?", "A."]', "expected a JSON object, got list"),
        (b'{"question": "Q?"}', "missing key 'answer'"),
        (b'{"question": 7, "answer": "A."}', "'question' should be str, got int"),
        (b'{"question": "  ", "answer": "A."}', "'question' is empty"),
        (b'{"question": "Q\xff?", "answer": "A."}', "invalid UTF-8"),
        (b'{"question": "Q\\ud800?", "answer": "A."}', "'question' is not valid Unicode"),
        (b'{"messages": [{"role": "user", "content": "Q?"}]}', "exactly one user and one assistant"),
        (b'{"messages": "Q?"}', "'messages' should be a list of objects"),
    ],
)
def test_malformed_jsonl_lines_are_reported_with_their_place_and_the_rest_is_built(line, reason, tmp_path):
    from .helpers import seed_pairs
    from .helpers import write_qa_seed as write_qa

    extra = tmp_path / "extra.jsonl"
    good = [json.dumps({"question": f"Extra {n}?", "answer": f"Answer {n}."}).encode() for n in range(3)]
    extra.write_bytes(b"\n".join([good[0], line, good[1], b"", good[2]]) + b"\n")
    settings = DataSettings.load(farense_home=tmp_path / "home", seed_dir=write_qa(tmp_path / "seed", seed_pairs(5)))
    build = build_dataset(settings, extra_jsonl=[extra])
    assert [(Path(p["file"]).name, p["line"]) for p in build.manifest["problems"]] == [("extra.jsonl", 2)]
    assert reason in build.manifest["problems"][0]["reason"]
    assert build.manifest["sources"]["extra"] == 3 and build.manifest["sources"]["seed"] == 5
