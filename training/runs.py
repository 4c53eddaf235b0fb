"""Run folders under $FARENSE_HOME/runs/<run_id>/ and their status: written by the trainer, read by
the lifecycle (`status`, the pipeline's resume of an interrupted run), so no MLX here.

    config.json      settings, memory plan, base model, dataset, fingerprint, valid-batch recipe
                     (and `distributed`: world size and backend, for a data-parallel run)
    manifest.json    copy of the dataset's manifest
    metrics.jsonl    one JSON object per line: {"kind": "train"|"eval", "step": ..., ...}
    status.json      state (running|finished|failed|cancelled|early_stopped), reason, pid, times, losses
    checkpoints/     step-NNNNNNN/ (see trainer/checkpoint.py)
    adapters/best    lowest validation loss so far (mlx-lm adapter folder)
    adapters/final   weights at the end of the run
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.files import LockBusy, acquire_lock, write_atomic
from common.home import Home

log = logging.getLogger(__name__)

RUNNING, FINISHED, FAILED, CANCELLED, EARLY_STOPPED = "running", "finished", "failed", "cancelled", "early_stopped"
RESUMABLE = (RUNNING, FAILED, CANCELLED)  # RUNNING only when its process is gone (killed, crashed)
ENDED = (FINISHED, EARLY_STOPPED)  # never resumed: their checkpoints serve nothing


class RunBusy(RuntimeError):
    """Another training process holds the runs lock."""


@dataclass(frozen=True)
class Run:
    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def best(self) -> Path:
        return self.dir / "adapters" / "best"

    @property
    def final(self) -> Path:
        return self.dir / "adapters" / "final"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def config(self) -> dict:
        return json.loads((self.dir / "config.json").read_text())

    def valid_set(self) -> Path | None:
        """The validation file of the run's frozen batches, which the gate reads again when this run's
        adapter is the champion; None if the run recorded none."""
        try:
            return Path(self.config()["valid_batches"]["valid_path"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def status(self) -> dict:
        try:
            return json.loads((self.dir / "status.json").read_text())
        except (OSError, ValueError):
            return {"run_id": self.id, "state": "unknown"}

    def write_json(self, name: str, data: dict) -> None:
        write_atomic(self.dir / name, json.dumps(data, indent=2, default=str))

    def set_status(self, state: str, **fields) -> dict:
        """Merge `fields` into status.json and set the state; written atomically."""
        status = self.status() | fields | {"run_id": self.id, "state": state, "updated_at": _now()}
        if state != RUNNING:
            status["finished_at"] = status["updated_at"]
        else:  # (re)started: forget how the previous attempt ended
            status.pop("finished_at", None)
            if "reason" not in fields:
                status.pop("reason", None)
        self.write_json("status.json", status)
        return status

    def append_metric(self, record: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict]) -> None:
        """On resume: metrics.jsonl = what the checkpoint had seen (drops steps that will be redone)."""
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))


def new_run(home: Path) -> Run:
    """A new run folder; its id is its creation time to the millisecond, so names sort by age."""
    while True:
        now = time.time()
        run = Run(
            Home(home).runs / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{int(now * 1000) % 1000:03d}"
        )
        try:
            run.dir.mkdir(parents=True)
        except FileExistsError:
            time.sleep(0.001)
            continue
        (run.dir / "checkpoints").mkdir()
        return run


def all_runs(home: Path) -> list[Run]:
    """Newest first (run ids start with their creation time)."""
    root = Home(home).runs
    if not root.is_dir():
        return []
    return [Run(p) for p in sorted(root.iterdir(), reverse=True) if (p / "config.json").is_file()]


def is_resumable(run: Run) -> bool:
    status = run.status()
    if status.get("state") not in RESUMABLE:
        return False
    return status.get("state") != RUNNING or not pid_alive(status.get("pid"))


def find_run(home: Path, run_id: str | None) -> Run | None:
    """The named run, or the newest unfinished run that has a checkpoint."""
    if run_id:
        run = Run(Home(home).runs / run_id)
        return run if (run.dir / "config.json").is_file() else None
    return next((r for r in all_runs(home) if is_resumable(r) and any(r.checkpoints.glob("step-*"))), None)


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_runs(home: Path, keep: int, keep_also: Iterable[Path] = ()) -> list[Path]:
    """Keep the newest `keep` runs, and those in `keep_also`, and delete the older ones (the
    registry holds its own copy of every adapter it registered); drop the checkpoints of the kept
    runs that ended. Nothing is touched while a run is in progress. Returns the folders deleted."""
    spared = {Path(path).resolve() for path in keep_also}
    try:
        with training_lock(home):
            runs = all_runs(home)
            removed = []
            for run in runs[keep:]:
                if run.dir.resolve() in spared:
                    continue
                shutil.rmtree(run.dir, ignore_errors=True)
                removed.append(run.dir)
            for run in [run for run in runs if run.dir not in removed]:
                if run.status().get("state") in ENDED and run.checkpoints.is_dir() and any(run.checkpoints.iterdir()):
                    shutil.rmtree(run.checkpoints, ignore_errors=True)
                    run.checkpoints.mkdir()
                    removed.append(run.checkpoints)
    except RunBusy as busy:
        log.info("runs not pruned: %s", busy)
        return []
    if removed:
        log.info("pruned %d run folder(s)/checkpoints, keeping the newest %d runs", len(removed), keep)
    return removed


@contextmanager
def training_lock(home: Path):
    """One training process per FARENSE_HOME: two would fight over memory and run folders."""
    path = Home(home).runs_lock
    try:
        handle = acquire_lock(path, timeout=0)
    except LockBusy:
        raise RunBusy(f"another training run is in progress ({path.read_text().strip() or 'unknown'})") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        handle.close()  # releases the lock


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
