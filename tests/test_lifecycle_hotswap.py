"""Hot swap: a promotion while the Engine serves a steady stream of chats, without a restart.

The pipeline promotes through the registry and then calls `on_promoted(version)`; the bot passes a
callback that calls `engine.refresh_production()`. Here the same two calls happen under load.
"""

from __future__ import annotations

import threading
import time

from inference.engine import Engine
from inference.settings import InferenceSettings
from training.lifecycle.registry import Registry

from .models import make_adapter

QUESTION = [{"role": "user", "content": "Quem fundou o Farense?"}]


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the engine stopped answering"
        time.sleep(0.02)


def test_promotion_under_load_swaps_adapter_without_failed_requests(isolated_env, tiny_model_dir, tmp_path):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    old = registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "a", seed=1)).version
    new = registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "b", seed=2)).version
    registry.promote(old, by="test", reason="initial")
    settings = InferenceSettings.load(model_path=str(tiny_model_dir), temperature=0.0, max_tokens=8)
    engine = Engine(settings, adapter="auto", max_batch=4)
    served: list[tuple[float, str | None]] = []  # (submitted at, adapter label)
    errors: list[BaseException] = []
    stop = threading.Event()

    def chat(number: int) -> None:
        while not stop.is_set():
            submitted = time.monotonic()
            try:
                served.append((submitted, engine.generate(QUESTION, key=f"chat-{number}").adapter))
            except BaseException as error:  # any failure is a test failure, reported below
                errors.append(error)

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(4)]
    try:
        assert engine.adapter_version == old
        for thread in threads:
            thread.start()
        wait_for(lambda: len(served) >= 8)
        registry.promote(new, by="pipeline", reason="passed the gate")
        engine.refresh_production()  # what the bot's on_promoted callback does (the engine may
        assert engine.adapter_version == new  # have followed the pointer already: then a no-op)
        swapped = time.monotonic()
        served_before = len(served)
        wait_for(lambda: len(served) >= served_before + 8)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        engine.close()

    assert errors == []
    labels = [label for _, label in served]
    assert set(labels) == {old, new} and labels.count(old) >= 8
    assert all(label == new for submitted, label in served if submitted > swapped)
    assert engine.adapter_version == new


def test_new_adapter_serves_at_once_while_answers_in_flight_finish_on_the_old_one(tiny_model_dir, tmp_path):
    settings = InferenceSettings.load(model_path=str(tiny_model_dir), temperature=0.0, max_tokens=400)
    engine = Engine(settings, adapter=make_adapter(tiny_model_dir, tmp_path / "old", seed=1))
    try:
        alone = engine.generate(QUESTION)  # the old adapter's answer, generated to the token limit
        assert alone.finish_reason == "length" and alone.adapter == "old"
        long = engine.submit(QUESTION, key="long")
        pieces = [long.events.get(timeout=60)]  # in flight
        engine.set_adapter(make_adapter(tiny_model_dir, tmp_path / "new", seed=2), "new")
        short = engine.generate(QUESTION, key="short", max_tokens=4)
        assert short.adapter == "new"
        assert not any(getattr(event, "done", None) for event in list(long.events.queue))  # still going
        while pieces[-1].done is None:
            pieces.append(long.events.get(timeout=60))
    finally:
        engine.close()
    finished = pieces[-1].done
    assert finished.adapter == "old"  # not moved to the new adapter half way
    assert "".join(piece.text for piece in pieces) == finished.text == alone.text
