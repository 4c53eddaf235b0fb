"""The Engine on the tiny llama: generation, streaming, batching across chats, adapter swaps."""

from __future__ import annotations

import threading

import pytest

from inference.adapters import AdapterError
from inference.engine import Engine
from inference.settings import InferenceSettings

from .models import make_adapter

QUESTION = [{"role": "user", "content": "Quando foi fundado o Farense?"}]


@pytest.fixture
def engine(tiny_model_dir):
    settings = InferenceSettings.load(model_path=str(tiny_model_dir), temperature=0.0, max_tokens=12)
    engine = Engine(settings, adapter=None)
    yield engine
    engine.close()


def test_generate_reports_tokens_and_timings(engine):
    result = engine.generate(QUESTION)
    assert result.completion_tokens > 0
    assert result.prompt_tokens == len(engine.prompt_tokens(QUESTION))
    assert 0 < result.first_token_seconds <= result.seconds
    assert result.adapter is None and result.model == "tiny-llama"


def test_stream_chunks_add_up_to_the_final_text(engine):
    chunks = list(engine.stream(QUESTION))
    assert chunks[-1].done is not None
    assert "".join(c.text for c in chunks) == chunks[-1].done.text
    assert all(c.done is None for c in chunks[:-1])


def test_system_prompt_is_part_of_the_prompt(engine):
    text = engine.tokenizer.decode(engine.prompt_tokens(QUESTION))
    assert engine.settings.system_prompt in text and "Quando foi fundado" in text


def test_concurrent_chats_batched_and_identical_to_sequential(engine):
    sequential = engine.generate(QUESTION).text
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = engine.generate(QUESTION, key=f"chat-{i}").text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert set(results.values()) == {sequential}  # greedy: batching must not change answers


def test_round_robin_admission_between_chats(tiny_model_dir):
    settings = InferenceSettings.load(model_path=str(tiny_model_dir), temperature=0.0, max_tokens=4)
    engine = Engine(settings, adapter=None, max_batch=1)
    try:
        with engine._wake:  # hold admission while queueing, so the order is decided by fairness
            busy = [engine.submit(QUESTION, key="busy") for _ in range(3)]
            quiet = engine.submit(QUESTION, key="quiet")
            order = []
            while (request := engine._next_request()) is not None:
                order.append(request)
            for request in order:  # put them back for the worker to serve
                engine._pending.setdefault(request.key, __import__("collections").deque()).append(request)
        assert [r.key for r in order] == ["busy", "quiet", "busy", "busy"]
        for request in [*busy, quiet]:
            while True:
                event = request.events.get(timeout=60)
                if getattr(event, "done", None) is not None:
                    break
    finally:
        engine.close()


def test_adapter_swap_changes_answers_and_back(engine, tiny_model_dir, tmp_path):
    base = engine.generate(QUESTION)
    adapter = make_adapter(tiny_model_dir, tmp_path / "v1", scale=40.0)
    engine.set_adapter(adapter, "v1")
    tuned = engine.generate(QUESTION)
    assert engine.adapter_version == "v1" and tuned.adapter == "v1"
    assert tuned.text != base.text
    engine.set_adapter(None)
    again = engine.generate(QUESTION)
    assert again.adapter is None and again.text == base.text


def test_corrupt_adapter_refused_and_old_one_kept(engine, tiny_model_dir, tmp_path):
    good = make_adapter(tiny_model_dir, tmp_path / "good")
    engine.set_adapter(good, "good")
    expected = engine.generate(QUESTION).text
    broken = make_adapter(tiny_model_dir, tmp_path / "broken")
    data = (broken / "adapters.safetensors").read_bytes()
    (broken / "adapters.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="truncated|outside"):
        engine.set_adapter(broken, "broken")
    assert engine.adapter_version == "good"
    assert engine.generate(QUESTION).text == expected


def test_adapter_with_wrong_shapes_refused(engine, tiny_model_dir, tmp_path):
    wrong = make_adapter(tiny_model_dir, tmp_path / "wrong", rank=4)
    config = (wrong / "adapter_config.json").read_text().replace('"rank": 4', '"rank": 8')
    (wrong / "adapter_config.json").write_text(config)
    with pytest.raises(AdapterError, match="does not fit"):
        engine.set_adapter(wrong, "wrong")
    assert engine.adapter_version is None
    assert engine.generate(QUESTION).completion_tokens > 0


def test_production_pointer_followed(engine, tiny_model_dir, tmp_path, isolated_env):
    import json

    adapter = make_adapter(tiny_model_dir, tmp_path / "v7")
    pointer = isolated_env / "adapters" / "production.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"version": "v7", "path": str(adapter)}))
    engine.settings.farense_home = isolated_env
    assert engine.refresh_production() is True
    assert engine.generate(QUESTION).adapter == "v7"
    assert engine.refresh_production() is False


def test_pointer_moved_by_another_process_is_followed(tiny_model_dir, tmp_path, isolated_env):
    import json
    import time

    settings = InferenceSettings.load(model_path=str(tiny_model_dir), temperature=0.0, max_tokens=4)
    engine = Engine(settings)  # "auto": follows the production pointer
    try:
        assert engine.generate(QUESTION).adapter is None
        adapter = make_adapter(tiny_model_dir, tmp_path / "v2")
        pointer = isolated_env / "adapters" / "production.json"
        pointer.parent.mkdir(parents=True)
        pointer.write_text(json.dumps({"version": "v2", "path": str(adapter)}))
        time.sleep(1.1)  # the pointer is looked at no more than once a second
        assert engine.generate(QUESTION).adapter == "v2"
        broken = tmp_path / "v3"
        broken.mkdir()  # no files: must be refused, v2 keeps serving
        pointer.write_text(json.dumps({"version": "v3", "path": str(broken)}))
        time.sleep(1.1)
        assert engine.generate(QUESTION).adapter == "v2"
    finally:
        engine.close()
