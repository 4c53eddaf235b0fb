"""Crash safety: SIGKILL during a training step, during a checkpoint write and during a promotion.

Known phases are hit deterministically: the child processes get a `sitecustomize` (written by these
tests, on their PYTHONPATH; nothing in the product) that SIGKILLs the process at a named point.
Random points are hit by killing children after random delays, many times over. After every kill:
production.json parses and names the old or the new version, every registered version verifies,
no lock is left held, and the next run resumes or starts afresh and ends normally.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common.home import Home
from inference.adapters import read_adapter, read_production
from training import runs
from training.lifecycle.pipeline import pipeline_state, run_pipeline
from training.lifecycle.registry import PRODUCTION, Registry
from training.trainer import checkpoint

from .helpers import clean_env, command, events, lifecycle_env, metrics, write_dataset, write_seed
from .models import make_adapter

SEED = int(os.environ.get("RELIABILITY_SEED", "20260401"))
FAIL_FAST = ["--iters", "0"]  # refused by the trainer's settings: the child exits 2 at once

KILL_HOOK = r'''
"""Fault injection for tests/test_reliability_crash.py: SIGKILL this process at FARENSE_TEST_KILL_AT.

  checkpoint:N              the N-th checkpoint is written but not yet fsynced and renamed into place
  promote:N:before|after    around the N-th durable write of Registry.promote (1 = the pointer)
  rollback:N:before|after   the same inside Registry.rollback
"""
import os
import signal

_POINT = os.environ.get("FARENSE_TEST_KILL_AT", "")


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


if _POINT.startswith("checkpoint:"):
    import inference  # the optimized BLAS before mlx, as in production
    from training.trainer import checkpoint as _checkpoint

    _wanted, _seen = int(_POINT.split(":")[1]), [0]
    _fsync = _checkpoint.fsync_tree

    def _fsync_then_maybe_die(folder):
        _seen[0] += 1
        if _seen[0] == _wanted:
            _die()
        _fsync(folder)

    _checkpoint.fsync_tree = _fsync_then_maybe_die
elif _POINT.startswith(("promote:", "rollback:")):
    import functools

    import inference
    from training.lifecycle import registry as _registry

    _action, _wanted, _when = _POINT.split(":")
    _wanted, _state = int(_wanted), {"active": False, "writes": 0}
    _write = _registry.write_atomic

    def _counted_write(path, text):
        if _state["active"]:
            _state["writes"] += 1
        if _state["active"] and _state["writes"] == _wanted and _when == "before":
            _die()
        _write(path, text)
        if _state["active"] and _state["writes"] == _wanted and _when == "after":
            _die()

    _original = getattr(_registry.Registry, _action)

    @functools.wraps(_original)
    def _watched(self, *args, **kwargs):
        _state["active"] = True
        return _original(self, *args, **kwargs)

    _registry.write_atomic = _counted_write
    setattr(_registry.Registry, _action, _watched)
'''


@pytest.fixture
def kill_hook(tmp_path, monkeypatch):
    """kill_hook("checkpoint:2"): every Python child started from now on dies at that point."""
    folder = tmp_path / "kill-hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(KILL_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))

    def arm(point: str | None) -> None:
        if point is None:
            monkeypatch.delenv("FARENSE_TEST_KILL_AT", raising=False)
        else:
            monkeypatch.setenv("FARENSE_TEST_KILL_AT", point)

    return arm


def lock_is_free(path: Path) -> bool:
    """Nobody holds the fcntl lock on `path` (a dead holder's lock is released by the kernel)."""
    if not path.exists():
        return True
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def check_registry(home: Path, model: Path, allowed: set[str | None] | None = None) -> str | None:
    """The registry invariants right after a kill, then after `repair()`; returns the production version."""
    root = home / "adapters"
    assert lock_is_free(root / ".lock"), "the registry lock is still held"
    pointer_file = root / "production.json"
    pointer = json.loads(pointer_file.read_text()) if pointer_file.exists() else {}  # never torn
    serving = pointer.get("version")
    if allowed is not None:
        assert serving in allowed, f"production is {serving}, expected one of {allowed}"
    registry = Registry(home, base_model=model)
    names = [entry.version for entry in registry.versions()]  # every version.json parses
    for name in names:
        registry.verify(name)  # complete: the registered bytes, parse, fit the model
    if serving is not None:
        assert serving in names and Path(pointer["path"]) == (root / serving).resolve()
        assert read_production(home) == (serving, (root / serving).resolve())
        read_adapter(root / serving)
    registry.history()  # parses

    repaired = registry.repair()  # what the next registry change does first
    assert registry.repair() == []  # and once is enough
    entries = registry.versions()
    assert [e.version for e in entries if e.status == PRODUCTION] == ([serving] if serving else []), repaired
    history = registry.history()
    if history:
        assert history[-1]["version"] == serving, (history[-1], repaired)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".lock"], repaired
    for entry in entries:
        assert sorted(p.name for p in entry.path.iterdir()) == [
            "adapter_config.json",
            "adapters.safetensors",
            "version.json",
        ]
    return serving


def run_child(code: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env if env is not None else dict(os.environ),
    )


# --- promotion: every phase, deterministically ---------------------------------------------------

SWITCH = r"""
import sys
from pathlib import Path
from training.lifecycle.registry import Registry
registry = Registry(Path(sys.argv[1]), base_model=sys.argv[2])
if sys.argv[3] == "promote":
    registry.promote("v0002", by="pipeline", reason="passed the gate")
else:
    registry.rollback(by="admin", reason="answers got worse")
print("survived")
"""


@pytest.mark.parametrize(
    "point, after",
    [
        ("promote:1:before", "v0001"),  # killed before the pointer moved: still the old version
        ("promote:1:after", "v0002"),  # pointer moved; neither status nor history written yet
        ("promote:2:after", "v0002"),  # the old version retired, the new one not yet marked
        ("promote:3:after", "v0002"),  # statuses written, the history line not
        ("rollback:1:after", "v0001"),
        ("rollback:3:after", "v0001"),
    ],
)
def test_promotion_killed_at_each_phase_leaves_old_or_new_and_a_working_registry(
    point, after, kill_hook, isolated_env, tiny_model_dir, tmp_path
):
    registry = Registry(isolated_env, base_model=tiny_model_dir)
    for seed in (1, 2):
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed))
    registry.promote("v0001", by="test", reason="setup")
    action = point.split(":")[0]
    if action == "rollback":
        registry.promote("v0002", by="test", reason="setup")
    history_before = len(registry.history())

    kill_hook(point)
    killed = run_child(SWITCH, isolated_env, tiny_model_dir, action)
    kill_hook(None)

    assert killed.returncode == -signal.SIGKILL and "survived" not in killed.stdout, killed.stderr[-2000:]
    assert check_registry(isolated_env, tiny_model_dir, {after}) == after
    history = registry.history()
    if after == ("v0001" if action == "promote" else "v0002"):  # the switch never happened
        assert len(history) == history_before
    else:  # it happened, and the history says so exactly once, recovered from the pointer if need be
        assert len(history) == history_before + 1 and history[-1]["action"] == action
    # The registry works on: another promotion and a rollback, in this process.
    other = "v0001" if after == "v0002" else "v0002"
    registry.promote(other, by="test", reason="after the crash")
    assert registry.rollback(by="test", reason="and back").version == after
    check_registry(isolated_env, tiny_model_dir, {after})


# --- promotion: random points, many times -------------------------------------------------------

CHURN = r"""
import sys
from pathlib import Path
from training.lifecycle.registry import Registry, RegistryError
home, model, adapter = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
registry = Registry(home, keep=4, base_model=model)
from inference.adapters import read_adapter
registry._check_fits(read_adapter(adapter))  # imports and first model build out of the timed part
print("ready", flush=True)
step = 0
while True:
    step += 1
    current = registry.production()
    others = [v.version for v in registry.versions() if current is None or v.version != current.version]
    kind = ("add", "promote", "promote", "rollback")[step % 4] if others else "add"
    print(kind, flush=True)
    try:
        if kind == "add":
            registry.add_candidate(adapter)
        elif kind == "promote":
            registry.promote(others[step % len(others)], by="churn", reason=f"step {step}")
        else:
            registry.rollback(by="churn", reason=f"step {step}")
    except RegistryError:  # e.g. nothing to roll back to
        pass
    print("done", flush=True)
"""


def churn_and_kill(home: Path, model: Path, adapter: Path, kills: int, rng: random.Random) -> Counter:
    """Kill a process that promotes, rolls back and adds versions nonstop, `kills` times; check each time."""
    interrupted: Counter = Counter()
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", CHURN, str(home), str(model), str(adapter)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        lines: list[str] = []
        reader = threading.Thread(target=lambda lines=lines, child=child: lines.extend(child.stdout))
        reader.start()
        threading.Event().wait(rng.uniform(0.05, 0.6))  # a random point of the churn
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        reader.join(timeout=60)
        assert child.returncode == -signal.SIGKILL, child.stderr.read()
        ops = [line.strip() for line in lines if line.strip() in ("add", "promote", "rollback")]
        finished = lines[-1].strip() == "done" if lines else True
        interrupted[ops[-1] if ops and not finished else "between operations"] += 1
        check_registry(home, model)
    return interrupted


def test_promotions_killed_at_random_points_never_break_the_registry(isolated_env, tiny_model_dir, tmp_path):
    rng = random.Random(SEED)
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    interrupted = churn_and_kill(isolated_env, tiny_model_dir, adapter, kills=8, rng=rng)
    print(f"\nkilled inside: {dict(interrupted)}")
    registry = Registry(isolated_env, keep=4, base_model=tiny_model_dir)
    assert len(registry.versions()) >= 1
    latest = registry.add_candidate(adapter).version
    registry.promote(latest, by="test", reason="after the churn")
    assert read_production(isolated_env)[0] == latest


@pytest.mark.soak
def test_soak_promotions_killed_at_random_points(isolated_env, tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    interrupted = churn_and_kill(isolated_env, tiny_model_dir, adapter, kills=100, rng=random.Random(SEED))
    print(f"\nkilled inside: {dict(interrupted)}")
    assert sum(interrupted.values()) == 100 and set(interrupted) >= {"add", "promote", "rollback"}


# --- training: a step, a checkpoint write ------------------------------------------------------


def run_args(iters: int) -> tuple:
    return (
        "--iters",
        iters,
        "--batch-size",
        4,
        "--eval-every",
        4,
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        2,
        "--checkpoint-every",
        2,
        "--events",
    )


def check_runs(home: Path) -> None:
    """After a kill: no lock held, no checkpoint half there, saved adapters complete."""
    assert lock_is_free(home / "runs" / ".lock"), "the training lock is still held"
    for run in runs.all_runs(home):
        json.loads((run.dir / "status.json").read_text())
        for folder in checkpoint.checkpoints(run.checkpoints):
            assert checkpoint.verify(folder) is None, folder
        for saved in (run.best, run.final):
            if saved.exists():
                read_adapter(saved)


def kill_training_repeatedly(
    root: Path, model: Path, models_root: Path, *, iters: int, kills: int, rng: random.Random
) -> list[tuple[int, str]]:
    """Train once without interruption, then again with SIGKILLs at random moments (steps,
    evaluations, checkpoint and adapter writes), resuming after each; both must end the same."""
    data = write_dataset(root / "dataset")
    reference_home, home = root / "reference", root / "killed"
    done = subprocess.run(
        command("run", "--dataset", data, *run_args(iters)),
        capture_output=True,
        text=True,
        env=clean_env(reference_home, models_root, model),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reference = reference_home / "runs" / events(done.stdout)[-1]["run_id"]

    env = clean_env(home, models_root, model)
    argv, codes, run_id, finished = ["--dataset", data, *run_args(iters)], [], None, False
    while len(codes) < kills:
        child = subprocess.Popen(
            command("run", *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        seen = []
        for line in child.stdout:  # kill once the run can be resumed: after its first checkpoint
            seen.append(json.loads(line))
            if seen[-1]["event"] == "checkpoint" or (seen[-1]["event"] == "start" and seen[-1].get("resumed")):
                break
        threading.Event().wait(rng.uniform(0.0, 0.5))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=60)
        run_id = seen[0]["run_id"]
        last = ([json.loads(line) for line in rest.splitlines() if line.strip()] or seen)[-1]
        codes.append((child.returncode, f"after {last['event']} {last.get('step', '')}".strip()))
        check_runs(home)
        status = json.loads((home / "runs" / run_id / "status.json").read_text())
        finished = status["state"] == "finished"
        if finished:
            break  # the kill came after the end
        assert runs.is_resumable(runs.Run(home / "runs" / run_id))
        argv = ["--resume", run_id, "--events"]
    if not finished:
        resumed = subprocess.run(command("run", *argv), capture_output=True, text=True, env=env, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]

    run_dir = home / "runs" / run_id
    assert [m["step"] for m in metrics(run_dir, "train")] == list(range(1, iters + 1))
    np.testing.assert_allclose(
        [m["loss"] for m in metrics(run_dir, "train")],
        [m["loss"] for m in metrics(reference, "train")],
        atol=1e-5,
        rtol=0,
    )
    import mlx.core as mx

    final, expected = (mx.load(str(d / "adapters" / "final" / "adapters.safetensors")) for d in (run_dir, reference))
    for name, value in expected.items():
        np.testing.assert_allclose(np.array(final[name]), np.array(value), atol=1e-5, rtol=0)
    assert not list((run_dir / "checkpoints").glob(".step-*"))  # staging debris of killed saves is gone
    check_runs(home)
    return codes


def test_training_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir, models_root):
    kills = kill_training_repeatedly(tmp_path, tiny_model_dir, models_root, iters=8, kills=2, rng=random.Random(SEED))
    print(f"\ntraining kills (exit code, last event before the kill): {kills}")
    assert kills and all(code in (-signal.SIGKILL, 0) for code, _ in kills)


@pytest.mark.soak
def test_soak_training_killed_at_random_points(tmp_path, tiny_model_dir, models_root):
    kills = kill_training_repeatedly(tmp_path, tiny_model_dir, models_root, iters=40, kills=12, rng=random.Random(SEED))
    print(f"\ntraining kills (exit code, last event before the kill): {kills}")
    assert sum(code == -signal.SIGKILL for code, _ in kills) >= 10


@pytest.fixture
def lifecycle_home(monkeypatch, tmp_path, tiny_model_dir, isolated_env):
    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    return isolated_env


def pipeline_child(*train_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "pipeline",
            "--events",
            "--trigger",
            "nightly",
            "--by",
            "scheduler",
            "--",
            *train_args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )


def test_pipeline_killed_in_a_checkpoint_write_then_in_the_promotion_recovers(
    lifecycle_home, kill_hook, tiny_model_dir, tmp_path
):
    home = lifecycle_home
    registry = Registry(home)
    registry.promote(
        registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "old")).version, by="test", reason="setup"
    )  # v0001 serves; a candidate must beat it
    args = [
        "--iters",
        "12",
        "--batch-size",
        "4",
        "--learning-rate",
        "2e-3",
        "--warmup-steps",
        "2",
        "--eval-every",
        "4",
        "--val-batches",
        "2",
        "--checkpoint-every",
        "4",
    ]

    # 1. The training child dies while writing its second checkpoint (files written, not in place).
    kill_hook("checkpoint:2")
    first = pipeline_child(*args)
    kill_hook(None)
    result = json.loads(first.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["outcome"] == "failed", first.stdout[-2000:]
    assert "killed by SIGKILL" in result["message"] and "Production unchanged: v0001" in result["message"]
    run = runs.Run(Path(result["run_dir"]))
    assert [p.name for p in checkpoint.checkpoints(run.checkpoints)] == ["step-0000004"]
    assert [p.name.split(".")[1] for p in run.checkpoints.glob(".step-*")] == ["step-0000008"]  # the torn one
    assert read_production(home)[0] == "v0001" and [v.version for v in registry.versions()] == ["v0001"]
    check_runs(home)
    check_registry(home, tiny_model_dir, {"v0001"})
    assert lock_is_free(Home(home).pipeline_lock) and pipeline_state(home)["running"] is False

    # 2. The next pipeline resumes that run from step 4; its own process dies right after moving
    #    the production pointer to the new version, before statuses and history are written.
    kill_hook("promote:1:after")
    second = pipeline_child(*args)
    kill_hook(None)
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    stages = [e for e in map(json.loads, second.stdout.splitlines()) if e.get("event") in ("stage", "start")]
    start = next(e for e in stages if e["event"] == "start")
    assert start["resumed"] and start["step"] == 4 and start["run_id"] == run.id
    assert [e["stage"] for e in stages if e["event"] == "stage"] == ["train", "register", "gate", "promote"]
    assert not list(run.checkpoints.glob(".step-*"))
    assert check_registry(home, tiny_model_dir, {"v0002"}) == "v0002"
    history = Registry(home).history()
    assert [(h["action"], h["version"], h["from"]) for h in history] == [
        ("promote", "v0001", None),
        ("promote", "v0002", "v0001"),
    ]
    state = pipeline_state(home)
    assert state["running"] is False  # its pid is gone: /status does not claim a run in progress
    assert lock_is_free(Home(home).pipeline_lock)

    # 3. No stale lock blocks the next run: it starts (and fails on purpose, fast), it is not "busy".
    third = run_pipeline(trigger="nightly", requested_by="scheduler", train_args=FAIL_FAST)
    assert third.outcome == "failed" and "Production unchanged: v0002" in third.message, third.message
    assert Registry(home).rollback(by="admin", reason="check").version == "v0001"
