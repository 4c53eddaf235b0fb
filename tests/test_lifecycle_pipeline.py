"""The retraining pipeline end to end on the tiny llama: real dataset builds, training and gate in
child processes, promotion, rejection, rollback; and the ways it must fail safely."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from common.home import Home
from data.knowledge import knowledge_hash
from data.store import Store
from inference.adapters import read_production
from training import runs
from training.lifecycle.pipeline import pipeline_state, run_pipeline
from training.lifecycle.registry import REJECTED, Registry

from .helpers import TRAIN_ARGS, lifecycle_env, write_seed
from .models import make_adapter

FAIL_FAST = ["--iters", "0"]  # refused by the trainer's settings: the child exits 2 at once


@pytest.fixture
def home(monkeypatch, tmp_path, tiny_model_dir, isolated_env):
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    return isolated_env


def test_promotes_first_candidate_rejects_bad_data_and_rolls_back(home, monkeypatch, tmp_path):
    events, promoted = [], []
    first = run_pipeline(
        trigger="nightly",
        requested_by="scheduler",
        on_progress=events.append,
        on_promoted=promoted.append,
        train_args=TRAIN_ARGS,
    )
    assert first.outcome == "promoted" and first.version == "v0001", first.message
    assert promoted == ["v0001"] and read_production(home)[0] == "v0001"
    # A fresh home: the pipeline opens the store, which seeds the facts, so it trains on grounded prompts.
    assert [e["stage"] for e in events if e["event"] == "stage"] == [
        "dataset",
        "ground",
        "train",
        "register",
        "gate",
        "promote",
    ]
    assert {"start", "step", "eval", "done"} <= {e["event"] for e in events}
    assert first.message.startswith("Promoted v0001 over base model (nightly, by scheduler).")
    assert "✓ val_loss" in first.message and first.report["accepted"] and first.run_dir.is_dir()
    registered = Registry(home).get("v0001")
    assert registered.run_dir == first.run_dir and registered.metrics["best_val_loss"] < 11
    assert registered.dataset["counts"]["train"] > 0 and registered.gate["accepted"]
    with Store(Home(home).database) as store:  # the knowledge base its dataset was grounded on
        assert registered.dataset["knowledge_hash"] == knowledge_hash(store)
    assert (registered.trigger, registered.record["requested_by"]) == ("nightly", "scheduler")

    unchanged = run_pipeline(trigger="nightly", requested_by="scheduler", skip_if_unchanged=True, train_args=TRAIN_ARGS)
    assert unchanged.outcome == "skipped" and "nothing new to learn" in unchanged.message
    assert [v.version for v in Registry(home).versions()] == ["v0001"]

    monkeypatch.setenv("SEED_DIR", str(write_seed(tmp_path / "garbled", garble_answers=True)))
    second = run_pipeline(
        trigger="retrain",
        requested_by="admin 42",
        on_promoted=promoted.append,
        skip_if_unchanged=True,
        train_args=TRAIN_ARGS,
    )
    assert second.outcome == "rejected" and second.version == "v0002", second.message
    assert "Production unchanged: v0001" in second.message and "✗ champion_val_loss" in second.message
    assert promoted == ["v0001"] and read_production(home)[0] == "v0001"
    registry = Registry(home)
    assert registry.get("v0002").status == REJECTED and registry.get("v0002").gate == second.report
    assert (registry.get("v0002").trigger, registry.get("v0002").record["requested_by"]) == ("retrain", "admin 42")
    state = pipeline_state(home)
    assert state["running"] is False
    assert state["last"]["outcome"] == "rejected" and state["last"]["version"] == "v0002"
    assert state["last"]["requested_by"] == "admin 42" and state["last"]["finished_at"]

    registry.promote("v0002", by="admin 42", reason="trying it anyway")
    assert registry.rollback(by="admin 42", reason="answers got worse").version == "v0001"
    assert read_production(home)[0] == "v0001"
    assert [(h["action"], h["version"]) for h in registry.history()] == [
        ("promote", "v0001"),
        ("promote", "v0002"),
        ("rollback", "v0001"),
    ]


def test_killed_training_fails_safely_and_the_next_pipeline_resumes_it(home):
    args = [*TRAIN_ARGS, "--checkpoint-every", "10"]
    seen: dict = {}

    def kill_at_first_checkpoint(event: dict) -> None:
        if event["event"] == "checkpoint" and "state" not in seen:
            seen["busy"] = run_pipeline(trigger="retrain", requested_by="admin", train_args=args)
            seen["state"] = pipeline_state(home)
            os.kill(seen["state"]["child_pid"], signal.SIGKILL)

    failed = run_pipeline(
        trigger="nightly", requested_by="scheduler", on_progress=kill_at_first_checkpoint, train_args=args
    )
    assert failed.outcome == "failed" and "killed by SIGKILL" in failed.message, failed.message
    assert "Production unchanged: base model" in failed.message
    assert seen["busy"].outcome == "busy" and f"pid {os.getpid()}" in seen["busy"].message
    state = seen["state"]
    assert state["running"] and state["pid"] == os.getpid() and state["stage"] == "train"
    assert state["last_event"]["event"] == "checkpoint" and state["trigger"] == "nightly"
    assert read_production(home) is None and Registry(home).versions() == []
    assert pipeline_state(home)["last"]["outcome"] == "failed"

    events: list[dict] = []
    resumed = run_pipeline(trigger="nightly", requested_by="scheduler", on_progress=events.append, train_args=args)
    start = next(e for e in events if e["event"] == "start")
    assert start["resumed"] and start["step"] == 10 and start["run_id"] == failed.run_dir.name
    assert [e["stage"] for e in events if e["event"] == "stage"][0] == "train"  # no new dataset
    assert resumed.outcome == "promoted" and resumed.run_dir == failed.run_dir, resumed.message
    training = Registry(home).get(resumed.version).training  # registered as the killed pipeline planned it
    assert training["mode"] == "full" and training["reason"] == "no production adapter to continue"


def test_training_that_cannot_start_fails_with_its_reason(home, tiny_model_dir, tmp_path):
    registry = Registry(home)
    registry.promote(
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "a")).version, by="test", reason="setup"
    )
    result = run_pipeline(trigger="nightly", requested_by="scheduler", train_args=FAIL_FAST)
    assert result.outcome == "failed" and result.version is None
    assert "Training failed" in result.message and "TRAIN_ITERS" in result.message
    assert "Production unchanged: v0001" in result.message and read_production(home)[0] == "v0001"
    assert pipeline_state(home)["last"]["outcome"] == "failed"
    assert not Home(home).pipeline_running.exists()


def test_stale_lock_of_a_dead_pipeline_is_taken_over(home, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Home(home).pipeline_lock.write_text(json.dumps({"pid": dead.pid, "since": "2026-01-01T03:00:00+0000"}))
    Home(home).pipeline_running.write_text(json.dumps({"pid": dead.pid, "stage": "train"}))
    assert pipeline_state(home)["running"] is False
    with caplog.at_level(logging.WARNING, logger="training.lifecycle.pipeline"):
        result = run_pipeline(trigger="nightly", requested_by="scheduler", train_args=FAIL_FAST)
    assert result.outcome == "failed"  # it ran (and failed on purpose), it was not "busy"
    assert f"taking over a stale pipeline lock of pid {dead.pid}" in caplog.text
    assert Home(home).pipeline_lock.read_text() == ""  # released cleanly this time


def test_pipeline_started_elsewhere_makes_this_one_busy(home):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from training.lifecycle.pipeline import _pipeline_lock\n"
            "with _pipeline_lock(Path(sys.argv[1]), trigger='nightly', requested_by='cron'):\n"
            "    print('locked', flush=True); sys.stdin.read()",
            str(home),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = run_pipeline(trigger="retrain", requested_by="admin", train_args=FAIL_FAST)
    finally:
        holder.communicate("", timeout=30)
    assert busy.outcome == "busy" and f"pid {holder.pid}" in busy.message and "nightly by cron" in busy.message
    assert pipeline_state(home)["last"] is None  # a refused start leaves no result behind
    assert run_pipeline(trigger="retrain", requested_by="admin", train_args=FAIL_FAST).outcome == "failed"


def test_pipeline_going_down_stops_its_child_with_a_checkpoint(home):
    seen: dict = {}

    def shutdown_at_first_step(event: dict) -> None:
        if event["event"] == "step":
            seen["child"] = pipeline_state(home)["child_pid"]
            raise SystemExit("the bot is shutting down")

    with pytest.raises(SystemExit):
        run_pipeline(
            trigger="nightly", requested_by="scheduler", on_progress=shutdown_at_first_step, train_args=TRAIN_ARGS
        )
    assert not runs.pid_alive(seen["child"])
    run = runs.all_runs(home)[0]
    assert run.status()["state"] == "cancelled" and any(run.checkpoints.glob("step-*"))  # resumable
    assert pipeline_state(home)["running"] is False and Home(home).pipeline_lock.read_text() == ""


def test_a_stopped_run_is_resumed_once_not_forever(home):
    from training.lifecycle.pipeline import _interrupted_run

    run = runs.new_run(home)
    run.write_json("config.json", {"run_id": run.id})
    run.set_status("failed", reason="BrokenPipeError: [Errno 32] Broken pipe")
    assert _interrupted_run(home, None) is None  # no checkpoint: nothing to resume from
    (run.checkpoints / "step-0000010").mkdir()
    assert _interrupted_run(home, None) == run
    assert _interrupted_run(home, {"outcome": "promoted", "resumed_run": run.id}) == run
    assert _interrupted_run(home, {"outcome": "failed", "resumed_run": run.id}) is None  # tried: start afresh
    run.set_status("finished")
    assert _interrupted_run(home, None) is None
