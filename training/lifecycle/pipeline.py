"""The retraining pipeline that the nightly scheduler and an admin's /retrain both call.

    dataset (data.builder) → ground (child process, when GROUNDING is on) → plan: warm or full
    → train (child process) → register candidate → gate (child process) → promote + on_promoted(version),
    or reject

The plan (training/lifecycle/warmstart.py) continues the production adapter on the curated examples
it has not seen, with a replay sample of the rest and a step budget to match, when production was
trained on the same basis; otherwise, or when asked (RETRAIN_MODE=full, `--full`), it trains from
scratch on the whole dataset. A warm night with nothing new is skipped: there is nothing to learn.
The candidate's registry record says which it was and why.

Grounding rewrites the built dataset with the prompts as served (training/evaluation/grounding.py), so the
adapter trains on the retrieved facts it will be shown, and the gate judges it the same way.

Training and the gate run in child processes, so a crash, an OOM kill or an MLX abort there ends
with outcome "failed" and production untouched, never with a dead bot. One pipeline at a time per
FARENSE_HOME: `pipeline.lock` is held with fcntl (the kernel drops it when its process dies) and
says who holds it (pid, start time); a lock left behind by a dead process is taken over.

A run that stopped mid-training (killed, cancelled by SIGTERM, or failed — e.g. its pipe broke
when the bot died) is resumed from its checkpoint by the next pipeline; if that resume fails as
well, the pipeline after it starts afresh. `pipeline_state()` tells /status what is running and
how the last run ended.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common.files import read_json_object, write_atomic
from common.home import Home
from common.settings import SettingsError
from data.builder import build_dataset
from data.settings import DataSettings
from data.store import Store
from inference.adapters import AdapterError
from inference.settings import InferenceSettings

from ..errors import EXIT_USAGE, one_line
from ..runs import all_runs, is_resumable, pid_alive
from ..settings import settings_with_flags
from .factory import install_factory_adapter, model_folder
from .messages import Note, version_or_base
from .registry import REJECTED, Registry, RegistryError
from .report import criterion_note
from .settings import LifecycleSettings
from .warmstart import PLAN_FILE, plan_training, training_summary

log = logging.getLogger(__name__)

TAIL_LINES = 20
CHILD_STOP_SECONDS = 120  # SIGTERM lets a training child finish its step and write a checkpoint
TRAINED = ("finished", "early_stopped")


@dataclass
class PipelineResult:
    outcome: str  # promoted | rejected | skipped | failed | busy
    version: str | None = None  # the candidate registered by this run, if any
    notes: tuple[Note, ...] = ()  # a few lines for admins, in any language (messages.py)
    report: dict = field(default_factory=dict)  # the gate report, when the gate ran
    run_dir: Path | None = None  # the training run, when one started
    training: dict = field(default_factory=dict)  # the plan it trained by: warm or full, and why

    def text(self, lang: str) -> str:
        return "\n".join(note.text(lang) for note in self.notes)

    @property
    def message(self) -> str:
        """The notes in English: for the command line and the log."""
        return self.text("en")

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "version": self.version,
            "message": self.message,
            "notes": [note.to_dict() for note in self.notes],
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "criteria": self.report.get("criteria"),
            "accepted": self.report.get("accepted"),
            "training": {key: value for key, value in self.training.items() if key not in ("basis", "settings")},
        }


def run_pipeline(
    *,
    trigger: str,
    requested_by: str,
    on_progress: Callable[[dict], None] | None = None,
    on_promoted: Callable[[str], None] | None = None,
    skip_if_unchanged: bool = False,
    train_args: Sequence[str] = (),
    full: bool = False,
) -> PipelineResult:
    """Run the whole pipeline once; never raises (a bot thread calls this). `full`: train from
    scratch whatever production was trained on."""
    try:
        settings, home = LifecycleSettings.load(), InferenceSettings.load().farense_home
    except SettingsError as error:
        return PipelineResult("failed", notes=(Note("cannot_start", {"error": str(error)}),))
    forced_full = Note("reason_asked") if full else Note("reason_setting") if settings.retrain_mode == "full" else None
    started = _now()
    with _pipeline_lock(home, trigger=trigger, requested_by=requested_by) as holder:
        if holder is not None:
            return PipelineResult("busy", notes=(_holder_note(home, holder),))
        progress = _Progress(
            home, {"pid": os.getpid(), "since": started, "trigger": trigger, "requested_by": requested_by}, on_progress
        )
        try:
            result = _pipeline(
                progress,
                settings,
                home,
                trigger,
                requested_by,
                on_promoted,
                skip_if_unchanged,
                [*settings.train_args, *train_args],
                forced_full,
            )
        except Exception as error:  # a bug or an unexpected disk problem: report it, keep the bot alive
            log.exception("pipeline failed")
            result = PipelineResult("failed", notes=(Note("crashed", {"error": f"{type(error).__name__}: {error}"}),))
        finally:
            Home(home).pipeline_running.unlink(missing_ok=True)
        write_atomic(
            Home(home).pipeline_last,
            json.dumps(
                result.to_dict()
                | {
                    "trigger": trigger,
                    "requested_by": requested_by,
                    "started_at": started,
                    "finished_at": _now(),
                    "resumed_run": progress.state.get("resumed_run"),
                },
                indent=2,
            ),
        )
        log.info("pipeline %s: %s", result.outcome, result.message.replace("\n", " | "))
        return result


def pipeline_state(home: Path) -> dict:
    """For /status: is a pipeline running (pid, since, stage, last event), and how did the last end."""
    running = read_json_object(Home(home).pipeline_running)
    alive = running is not None and pid_alive(running.get("pid"))
    return {"running": alive, **(running if alive else {}), "last": read_json_object(Home(home).pipeline_last)}


def _pipeline(
    progress: _Progress,
    settings: LifecycleSettings,
    home: Path,
    trigger: str,
    requested_by: str,
    on_promoted: Callable[[str], None] | None,
    skip_if_unchanged: bool,
    train_args: list[str],
    force_full: Note | None,
) -> PipelineResult:
    registry = Registry(home, keep=settings.keep_adapters)
    install_factory_adapter(registry, model_folder(InferenceSettings.load()))  # the champion of a fresh home
    production = registry.production()
    serving_now = Note("unchanged", {"version": version_or_base(production.version if production else None)})
    try:
        planned = settings_with_flags(train_args)  # what a run trains with: refused here, before any work
    except SettingsError as error:
        return PipelineResult("failed", notes=(Note("training_failed", {"error": one_line(error)}), serving_now))
    trained = None
    interrupted = _interrupted_run(home, read_json_object(Home(home).pipeline_last))
    if interrupted is not None:
        unrecorded = Note("reason_unrecorded", {"run": interrupted.id})
        training = read_json_object(interrupted.dir / PLAN_FILE) or {
            "mode": "unknown",
            "reason": unrecorded.text("en"),
            "reason_note": unrecorded.to_dict(),
        }
        progress.update(resumed_run=interrupted.id)
        progress.stage("train", resume=interrupted.id)
        log.info("resuming the interrupted training run %s", interrupted.id)
        trained = _child(["training", "run", "--events", "--resume", interrupted.id, *train_args], progress)
        if trained.returncode == EXIT_USAGE:
            log.warning("cannot resume %s (%s); starting a new run", interrupted.id, trained.error())
            trained = None
    if trained is None:
        progress.stage("dataset")
        data_settings = DataSettings.load()
        Store(data_settings.home.database).close()  # seeds the knowledge base on a fresh home
        build = build_dataset(data_settings)
        dataset = build.path
        if _grounded_serving():
            progress.stage("ground", dataset=str(build.path))
            grounded = _child(["training", "ground", "--events", str(build.path)], progress)
            if grounded.returncode != 0 or "grounded" not in grounded.events:
                return PipelineResult(
                    "failed", notes=(Note("grounding_failed", {"error": grounded.error()}), serving_now)
                )
            dataset = Path(grounded.events["grounded"]["path"])
        plan = plan_training(
            production,
            build.manifest,
            dataset,
            planned,
            settings,
            InferenceSettings.load(),
            force_full=force_full,
            registered=registry.versions(),
        )
        training = plan.record()
        if plan.nothing_new:
            until = production.training.get("curated_until") or Note("seed_only")
            return PipelineResult(
                "skipped",
                notes=(Note("nothing_new", {"version": production.version, "until": until}),),
                training=training,
            )
        reason = _unchanged(registry, production, plan.content_hash) if skip_if_unchanged else None
        if reason:
            return PipelineResult("skipped", notes=(reason,), training=training)
        progress.stage("train", dataset=str(plan.dataset), mode=plan.mode, reason=plan.reason.text("en"))
        log.info("%s", plan.summary().text("en"))

        def record_plan(event: dict) -> None:  # a resumed run is registered as it was planned
            if event.get("event") == "start" and event.get("run_dir"):
                write_atomic(Path(event["run_dir"]) / PLAN_FILE, json.dumps(training, indent=2))

        trained = _child(["training", "run", "--events", *train_args, *plan.run_flags()], progress, record_plan)

    run_dir = Path(trained.events["start"]["run_dir"]) if "start" in trained.events else None
    done = trained.events.get("done") or {}
    if trained.returncode != 0 or done.get("status") not in TRAINED:
        return PipelineResult(
            "failed",
            notes=(Note("training_failed", {"error": trained.error()}), serving_now),
            run_dir=run_dir,
            training=training,
        )

    progress.stage("register")
    best = run_dir / "adapters" / "best"
    adapter = best if best.is_dir() else run_dir / "adapters" / "final"
    manifest = read_json_object(run_dir / "manifest.json") or {}
    metrics = {
        k: done.get(k)
        for k in ("status", "step", "total", "initial_val_loss", "best_val_loss", "best_step", "final_val_loss")
    }
    try:
        candidate = registry.add_candidate(
            adapter,
            run_dir=run_dir,
            manifest=manifest,
            metrics=metrics,
            trigger=trigger,
            requested_by=requested_by,
            training=training,
        )
    except (AdapterError, RegistryError) as error:
        return PipelineResult(
            "failed",
            notes=(Note("not_registered", {"error": str(error)}), serving_now),
            run_dir=run_dir,
            training=training,
        )

    progress.stage("gate", version=candidate.version)
    gated = _child(["training", "gate", candidate.version], progress)
    report = registry.get(candidate.version).gate  # the gate child records its report there
    if gated.returncode != 0 or not report:
        return PipelineResult(
            "failed",
            candidate.version,
            run_dir=run_dir,
            notes=(Note("gate_failed", {"version": candidate.version, "error": gated.error()}), serving_now),
            training=training,
        )
    how = training_summary(training)
    trained_on = Note(
        "trained_on",
        {
            "run": run_dir.name,
            "steps": done.get("step"),
            "loss": _loss(done.get("best_val_loss")),
            "train": candidate.dataset.get("counts", {}).get("train"),
            "valid": candidate.dataset.get("counts", {}).get("valid"),
        },
    )
    champion = version_or_base(report["champion"]["version"])
    if not report["accepted"]:
        failing = [criterion_note(row) for row in report["criteria"] if not row["passed"]]
        return PipelineResult(
            "rejected",
            candidate.version,
            report=report,
            run_dir=run_dir,
            training=training,
            notes=(
                Note("rejected", {"version": candidate.version, "trigger": trigger, "by": requested_by}),
                serving_now,
                *failing,
                how,
                trained_on,
            ),
        )

    progress.stage("promote", version=candidate.version)
    current = registry.production()
    if (current.version if current else None) != report["champion"]["version"]:
        return PipelineResult(
            "rejected",
            candidate.version,
            report=report,
            run_dir=run_dir,
            training=training,
            notes=(
                Note(
                    "production_changed",
                    {
                        "version": candidate.version,
                        "champion": champion,
                        "current": version_or_base(current.version if current else None),
                    },
                ),
            ),
        )
    registry.promote(candidate.version, by=requested_by, reason=f"{trigger} pipeline: passed the gate")
    notes = [
        Note("promoted", {"version": candidate.version, "champion": champion, "trigger": trigger, "by": requested_by}),
        *[criterion_note(row) for row in report["criteria"] if row["kind"] == "quality"],
        how,
        trained_on,
    ]
    if on_promoted is not None:
        try:
            on_promoted(candidate.version)
        except Exception as error:
            log.exception("on_promoted(%s) failed", candidate.version)
            notes.append(Note("hot_swap_failed", {"error": f"{type(error).__name__}: {error}"}))
    return PipelineResult("promoted", candidate.version, tuple(notes), report, run_dir, training)


def _grounded_serving() -> bool:
    """Whether answers are served grounded: GROUNDING on and a knowledge base to retrieve from
    (without one, serving answers ungrounded, and so does training)."""
    from inference.grounding import FactIndex

    serving = InferenceSettings.load()
    if not serving.grounding:
        return False
    index = FactIndex(serving.home.database)
    try:
        return index.available()
    finally:
        index.close()


def _interrupted_run(home: Path, last: dict | None):
    """The newest run, if it stopped early after writing a checkpoint and no pipeline has already
    tried and failed to resume it (a failure that repeats must not block training for good)."""
    runs = all_runs(home)
    newest = runs[0] if runs else None
    if newest is None or not is_resumable(newest) or not any(newest.checkpoints.glob("step-*")):
        return None
    retried = last is not None and last.get("resumed_run") == newest.id and last.get("outcome") == "failed"
    return None if retried else newest


def _unchanged(registry: Registry, production, content_hash: str) -> Note | None:
    """Why retraining on this dataset is pointless (training is seeded: same data, same adapter)."""
    if production is not None and production.dataset.get("content_hash") == content_hash:
        return Note("skipped_production", {"version": production.version, "dataset": content_hash[:12]})
    newest = (registry.versions() or [None])[-1]
    if newest is not None and newest.status == REJECTED and newest.dataset.get("content_hash") == content_hash:
        return Note("skipped_rejected", {"version": newest.version, "dataset": content_hash[:12]})
    return None


@dataclass
class _ChildResult:
    returncode: int
    events: dict[str, dict]  # the last event of each kind
    stderr: list[str]  # the last TAIL_LINES lines

    def error(self) -> str:
        """The child's own error message, else how it ended and its last stderr lines."""
        if "error" in self.events:
            return self.events["error"].get("message", "unknown error")
        done = self.events.get("done")
        if self.returncode == 0 and done is not None:
            return f"the run ended {done.get('status')} at step {done.get('step')} ({done.get('reason')})"
        how = (
            f"killed by {signal.Signals(-self.returncode).name}"
            if self.returncode < 0
            else f"exit code {self.returncode}"
        )
        tail = " | ".join(line.strip() for line in self.stderr[-5:] if line.strip())
        return f"{how}{': ' + tail if tail else ''}"


def _child(module_args: list[str], progress: _Progress, on_event: Callable[[dict], None] | None = None) -> _ChildResult:
    """Run `python -m ...`, streaming its JSON events to `progress` (and `on_event`); stderr is
    drained meanwhile."""
    process = subprocess.Popen(
        [sys.executable, "-m", *module_args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    progress.update(child_pid=process.pid)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    drain = threading.Thread(target=_drain, args=(process.stderr, tail), daemon=True)
    drain.start()
    events: dict[str, dict] = {}
    try:
        for line in process.stdout:
            event = _parse(line)
            if event is not None and isinstance(event.get("event"), str):
                events[event["event"]] = event
                if on_event is not None:
                    on_event(event)
                progress.emit(event)
            else:
                log.debug("child: %s", line.rstrip())
    except BaseException:  # we are going down: let the child checkpoint and stop, not train on orphaned
        process.terminate()
        try:
            process.wait(timeout=CHILD_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    returncode = process.wait()
    drain.join()
    progress.update(child_pid=None)
    return _ChildResult(returncode, events, list(tail))


def _drain(stream, tail: deque) -> None:
    for line in stream:
        tail.append(line)
        log.debug("child: %s", line.rstrip())


class _Progress:
    """The running pipeline's state in pipeline_running.json, and the caller's on_progress."""

    def __init__(self, home: Path, state: dict, callback: Callable[[dict], None] | None):
        self.path, self.state, self.callback = Home(home).pipeline_running, state | {"stage": "start"}, callback
        self._write()

    def stage(self, name: str, **fields) -> None:
        self.state["stage"] = name
        self.emit({"event": "stage", "stage": name, **fields})

    def emit(self, event: dict) -> None:
        self.update(last_event=event)
        if self.callback is not None:
            try:
                self.callback(event)
            except Exception:  # a broken progress display must not stop training
                log.exception("on_progress failed on %s", event.get("event"))

    def update(self, **fields) -> None:
        self.state.update(fields)
        self._write()

    def _write(self) -> None:
        write_atomic(self.path, json.dumps(self.state, default=str))


@contextmanager
def _pipeline_lock(home: Path, **info):
    """Yield None with the lock held, or the holder's record when another pipeline has it."""
    home.mkdir(parents=True, exist_ok=True)
    with open(Home(home).pipeline_lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            yield _parse(handle.read()) or {}
            return
        handle.seek(0)
        left = handle.read().strip()
        if left:  # the lock was free, yet a holder is recorded: it died without cleaning up
            holder = _parse(left) or {}
            log.warning(
                "taking over a stale pipeline lock of pid %s (started %s, process %s)",
                holder.get("pid"),
                holder.get("since"),
                "alive" if pid_alive(holder.get("pid")) else "gone",
            )
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": _now(), **info}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        try:
            yield None
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _holder_note(home: Path, holder: dict) -> Note:
    """Who holds the pipeline lock, and how far it got."""
    running = read_json_object(Home(home).pipeline_running) or {}
    return Note(
        "busy",
        {
            "pid": holder.get("pid", "?"),
            "since": holder.get("since", "?"),
            "stage": running.get("stage", "?"),
            "trigger": holder.get("trigger", "?"),
            "by": holder.get("requested_by", "?"),
        },
    )


def _parse(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
