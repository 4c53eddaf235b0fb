"""Data-parallel training through mlx.launch: two local ranks on the ring backend (127.0.0.1).

Two ranks, each holding its rows of every global micro-batch, must compute what one process
computes with the same global batch: the same per-step losses, validation losses and adapter,
up to float summation order. Stopping the launcher (SIGTERM, then SIGKILL) leaves checkpoints
that distributed --resume runs continue to that same result. And the pipeline trains on two
ranks when PIPELINE_TRAIN_ARGS says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from training.runs import pid_alive

from .helpers import adapter, clean_env, cli, command, events, metrics, write_dataset

ITERS = 12
# Batches of 3 rows split 2 + 1 over the ranks (the last, of 2 rows, 1 + 1): uneven shares, so the
# losses only match if each rank's share is weighted by its assistant tokens. Two micro-batches per
# step exercise the accumulation.
CONFIG = (
    "--iters",
    ITERS,
    "--batch-size",
    3,
    "--grad-accumulation",
    2,
    "--eval-every",
    4,
    "--learning-rate",
    "1e-3",
    "--warmup-steps",
    2,
    "--events",
)
TOLERANCE = 1e-5  # float32 sums in another order; measured differences are ~2e-6


def _summary(run_dir) -> dict:
    return {
        "losses": [m["loss"] for m in metrics(run_dir, "train")],
        "steps": [m["step"] for m in metrics(run_dir, "train")],
        "evals": [(m["step"], m["val_loss"]) for m in metrics(run_dir, "eval")],
        "final": {k: np.array(v) for k, v in adapter(run_dir / "adapters" / "final").items()},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, models_root):
    """One process, the same global batch, never interrupted."""
    root = tmp_path_factory.mktemp("single")
    data = write_dataset(root / "dataset")
    result = cli("run", "--dataset", data, *CONFIG, env=clean_env(root / "home", models_root, tiny_model_dir), cwd=root)
    assert result.returncode == 0, result.stderr
    done = events(result.stdout)[-1]
    assert done["event"] == "done" and done["status"] == "finished"
    run_dir = root / "home" / "runs" / done["run_id"]
    return {"dataset": data, "run_dir": run_dir, **_summary(run_dir)}


def _differences(run_dir, reference) -> dict:
    """How far a run is from the reference; asserts it is within TOLERANCE."""
    run = _summary(run_dir)
    assert run["steps"] == list(range(1, ITERS + 1))  # redone steps not doubled
    assert [s for s, _ in run["evals"]] == [s for s, _ in reference["evals"]]
    assert set(run["final"]) == set(reference["final"])
    numbers = {
        "train_loss": float(np.max(np.abs(np.subtract(run["losses"], reference["losses"])))),
        "val_loss": float(
            np.max(np.abs(np.subtract([v for _, v in run["evals"]], [v for _, v in reference["evals"]])))
        ),
        "adapter": max(float(np.max(np.abs(run["final"][k] - reference["final"][k]))) for k in run["final"]),
    }
    assert all(value <= TOLERANCE for value in numbers.values()), numbers
    return numbers


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        command("run", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )


def test_two_ranks_on_the_ring_equal_one_process_with_the_same_global_batch(reference, tiny_env, isolated_env):
    result = cli("run", "--dataset", reference["dataset"], "--local-ranks", 2, *CONFIG)

    assert result.returncode == 0, result.stderr
    seen = events(result.stdout)
    start, done = seen[0], seen[-1]
    assert start["event"] == "start" and start["distributed"] == {"world_size": 2, "backend": "ring"}
    assert done["event"] == "done" and done["status"] == "finished" and done["step"] == ITERS
    # only rank 0 reports: every step once, in order
    assert [e["step"] for e in seen if e["event"] == "step"] == list(range(1, ITERS + 1))
    rank_1_lines = [line for line in result.stderr.splitlines() if "[rank 1]" in line]
    assert all(" INFO " not in line for line in rank_1_lines)  # rank 1 logs warnings only
    run_dir = isolated_env / "runs" / done["run_id"]
    assert json.loads((run_dir / "config.json").read_text())["distributed"]["world_size"] == 2
    assert [p.name for p in (isolated_env / "runs").iterdir() if not p.name.startswith(".")] == [done["run_id"]]

    numbers = _differences(run_dir, reference)

    print(f"\n2 ranks vs 1 process, max |difference|: {numbers}")
    for one, two, step in zip(reference["losses"], _summary(run_dir)["losses"], range(1, ITERS + 1)):
        print(f"  step {step}: loss 1 process {one:.7f}  2 ranks {two:.7f}")


def test_a_warm_start_reaches_every_rank(reference, tiny_env, isolated_env, tmp_path):
    import shutil

    start = shutil.copytree(reference["run_dir"] / "adapters" / "final", tmp_path / "start")
    # learning rate 0: the ranks end where they started, which must be the start adapter on both
    result = cli(
        "run", "--dataset", reference["dataset"], "--local-ranks", 2, *CONFIG, "--iters", 2, "--learning-rate", 0,
        "--init-adapter", start,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    done = events(result.stdout)[-1]
    assert done["event"] == "done" and done["status"] == "finished"
    final = adapter(isolated_env / "runs" / done["run_id"] / "adapters" / "final")
    for name, value in reference["final"].items():
        assert np.array_equal(np.array(final[name]), value), name


def test_sigterm_then_sigkill_of_the_launcher_each_leave_a_checkpoint_and_distributed_resumes_end_equal(
    reference, tiny_env, isolated_env
):
    # SIGTERM: forwarded to the ranks, which finish the step, checkpoint and end "cancelled" (exit 0)
    child = _start("--dataset", reference["dataset"], "--local-ranks", 2, "--checkpoint-every", 1000, *CONFIG)
    seen = []
    for line in child.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "step" and seen[-1]["step"] == 2:
            child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)

    assert child.returncode == 0, stderr
    done = seen[-1]
    # The launcher forwards SIGTERM to every rank; whichever rank sees it first stops them all.
    assert done["event"] == "done" and done["status"] == "cancelled"
    assert "SIGTERM" in done["reason"] or "another rank's stop request" in done["reason"], done["reason"]
    stopped = done["step"]
    assert 2 <= stopped < ITERS and [e for e in seen if e["event"] == "checkpoint"][-1]["step"] == stopped
    run_dir = isolated_env / "runs" / done["run_id"]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "cancelled"
    assert (run_dir / "checkpoints" / f"step-{stopped:07d}" / "index.json").is_file()
    assert not (run_dir / "adapters" / "final").exists()

    # SIGKILL of the resumed run's launcher: rank 0 sees its stdin close and stops every rank at the
    # end of the step, with a checkpoint (the deadline only keeps a broken build from hanging)
    child = _start("--resume", done["run_id"], "--local-ranks", 2, "--events")
    for line in child.stdout:
        event = json.loads(line)
        if event["event"] == "start":
            assert event["resumed"] is True and event["step"] == stopped and event["distributed"]["world_size"] == 2
        if event["event"] == "step":
            child.send_signal(signal.SIGKILL)
            break
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = json.loads((run_dir / "status.json").read_text())
        if status["state"] != "running" and not pid_alive(status["pid"]):
            break
        time.sleep(0.2)
    assert status["state"] == "cancelled" and "launcher gone" in status["reason"], status
    killed = status["step"]
    assert stopped < killed < ITERS
    assert (run_dir / "checkpoints" / f"step-{killed:07d}" / "index.json").is_file()

    resumed = cli("run", "--resume", "--local-ranks", 2, "--events")  # the newest interrupted run

    assert resumed.returncode == 0, resumed.stderr
    start, done = events(resumed.stdout)[0], events(resumed.stdout)[-1]
    assert start["run_id"] == run_dir.name and start["resumed"] is True and start["step"] == killed
    assert done["status"] == "finished" and done["step"] == ITERS
    _differences(run_dir, reference)


def test_the_pipeline_trains_on_two_ranks_when_train_distributed_is_set(
    tiny_model_dir, isolated_env, monkeypatch, tmp_path
):
    from training.lifecycle.pipeline import run_pipeline

    from .helpers import lifecycle_env, write_seed

    lifecycle_env(monkeypatch, tiny_model_dir, write_seed(tmp_path / "seed"))
    monkeypatch.setenv("TRAIN_DISTRIBUTED", "2")  # the ranks inherit it too: they must not relaunch
    progress = []

    result = run_pipeline(
        trigger="retrain",
        requested_by="admin",
        on_progress=progress.append,
        train_args=[
            "--iters",
            "6",
            "--batch-size",
            "4",
            "--learning-rate",
            "2e-3",
            "--warmup-steps",
            "2",
            "--eval-every",
            "3",
            "--val-batches",
            "4",
        ],
    )

    assert result.outcome in ("promoted", "rejected") and result.version == "v0001", result.message
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "ring"}
    assert [e["step"] for e in progress if e.get("event") == "step"] == list(range(1, 7))
    assert [e["stage"] for e in progress if e.get("event") == "stage"][:5] == [
        "dataset",
        "ground",
        "train",
        "register",
        "gate",
    ]


def test_a_failure_on_rank_0_ends_every_rank_with_rank_0s_error_and_exit_code(tiny_env, isolated_env):
    result = cli("run", "--resume", "--local-ranks", 2, "--events")  # nothing to resume: exit 2

    assert result.returncode == 2, result.stderr
    assert events(result.stdout) == [
        {
            "event": "error",
            "exit_code": 2,
            "message": f"no unfinished run with a checkpoint under {isolated_env / 'runs'}",
        }
    ]
    assert "[rank 1]" in result.stderr and "rank 0 failed" in result.stderr  # rank 1 just ended, quietly
    assert "Traceback" not in result.stderr
