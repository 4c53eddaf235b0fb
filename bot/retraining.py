"""Retraining from the bot: one run at a time, progress as text, the new adapter served at once.

The pipeline blocks for minutes, so it runs on a worker thread; its progress callbacks arrive on
that thread too. The nightly run claims its date in the database first, so a restarted bot or a
second process never trains the same night twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from data.backup import Backup, BackupError, describe, scheduled_backup
from data.store import Store
from inference.engine import Engine
from training.lifecycle.commands import open_registry
from training.lifecycle.factory import install_factory_adapter, model_folder
from training.lifecycle.pipeline import run_pipeline

from .logs import log_context
from .texts import OUTCOMES, STAGES, Notice, named, notice, text

log = logging.getLogger(__name__)

NIGHTLY_JOB_ID = "nightly-retrain"
FIRST_JOB_ID = "first-adapter"
MAINTENANCE_JOB_ID = "nightly-maintenance"  # the night's backup and retention, once however often it retries
Notify = Callable[[Notice], Awaitable[None]]  # tells the admins, each in their language


@dataclass(frozen=True)
class RetrainOutcome:
    outcome: str  # promoted | rejected | skipped | failed | busy
    details: Notice  # what happened, a few lines in the language asked for

    @property
    def message(self) -> str:
        """The details in English, for the log."""
        return self.details("en")

    def report(self, key: str, lang: str, **values: object) -> str:
        """The outcome under the heading `key` (retrain_result, first_training_result), in `lang`."""
        return text(key, lang, outcome=named(OUTCOMES, self.outcome, lang), details=self.details(lang), **values)


class Retrainer:
    def __init__(self, engine: Engine, *, train_args: tuple[str, ...] = ()):
        self.engine = engine
        self.train_args = tuple(train_args)
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def run(
        self,
        *,
        trigger: str,
        requested_by: str,
        on_progress: Callable[[dict], None] | None = None,
        skip_if_unchanged: bool = False,
        full: bool = False,
    ) -> RetrainOutcome:
        """Run the whole pipeline (build, train, gate, promote) unless one is running already;
        `full`: from scratch, not from the production adapter."""
        if not self._lock.acquire(blocking=False):
            return RetrainOutcome("busy", notice("busy"))
        try:
            with log_context(run=f"{trigger}-{datetime.now():%Y%m%d-%H%M%S}"):  # tags the pipeline's lines too
                log.info("retraining (%s, requested by %s)", trigger, requested_by)
                return await asyncio.to_thread(self._run, trigger, requested_by, on_progress, skip_if_unchanged, full)
        finally:
            self._lock.release()

    def _run(self, trigger, requested_by, on_progress, skip_if_unchanged, full) -> RetrainOutcome:
        try:
            result = run_pipeline(
                trigger=trigger,
                requested_by=requested_by,
                on_progress=on_progress,
                on_promoted=self._promoted,
                skip_if_unchanged=skip_if_unchanged,
                train_args=self.train_args,
                full=full,
            )
        except Exception as error:  # the pipeline reports its failures; this is for its bugs
            log.exception("the training pipeline crashed")
            return RetrainOutcome("failed", notice("training_crashed", error=f"{type(error).__name__}: {error}"))
        log.info("retraining finished: %s (%s)", result.outcome, result.message.replace("\n", " | "))
        return RetrainOutcome(result.outcome, result.text)

    def _promoted(self, version: str) -> None:
        """Serve the adapter the pipeline just promoted, without a restart."""
        self.engine.refresh_production()
        log.info("now serving %s (wanted %s)", self.engine.adapter_version, version)


class ProgressText:
    """The single progress message of a run, in `lang`: the current stage and the latest step."""

    def __init__(self, lang: str):
        self.lang = lang
        self.title = text("retraining", lang)
        self.stage = "starting"
        self.step = ""
        self.val_loss: float | None = None

    def update(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.stage = str(event.get("stage"))
        elif kind == "eval" and isinstance(event.get("val_loss"), (int, float)):
            self.val_loss = event["val_loss"]
        elif kind == "step":
            lang = self.lang
            parts = [text("progress_step", lang, step=event.get("step"), total=event.get("total"))]
            if isinstance(event.get("loss"), (int, float)):
                parts.append(text("progress_loss", lang, loss=f"{event['loss']:.3f}"))
            if self.val_loss is not None:
                parts.append(text("progress_val_loss", lang, loss=f"{self.val_loss:.3f}"))
            if isinstance(event.get("eta_s"), (int, float)):
                parts.append(text("progress_eta", lang, eta=duration(event["eta_s"])))
            self.step = " · ".join(parts)

    def render(self) -> str:
        stage = text("progress_stage", self.lang, stage=named(STAGES, self.stage, self.lang))
        return "\n".join(line for line in (self.title, stage, self.step) if line)


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


async def nightly_retrain(
    retrainer: Retrainer,
    store: Store,
    now: datetime,
    notify: Notify,
    retention: Callable[[], Notice] | None = None,
) -> RetrainOutcome | None:
    """The scheduled run: once per local date, after a backup (BACKUP_KEEP kept), skipped when
    there is no new curated data; then `retention` (bot/retention.py), whose line joins the report.

    Backup and retention happen once a night. When another run is in progress (an admin's
    /retrain, `python -m training pipeline`) the training returns "busy" without consuming the
    date, for the scheduler to retry; only the night's first attempt reports a busy outcome."""
    night = now.date().isoformat()
    if not await asyncio.to_thread(store.claim_job, NIGHTLY_JOB_ID, night):
        log.info("nightly retraining of %s already claimed (restart or second process): not again", night)
        return None
    first_attempt = await asyncio.to_thread(store.claim_job, MAINTENANCE_JOB_ID, night)
    backup = await asyncio.to_thread(scheduled_backup, store.path) if first_attempt else None
    result = await retrainer.run(trigger="nightly", requested_by="scheduler", skip_if_unchanged=True)
    if result.outcome == "busy":
        await asyncio.to_thread(store.release_job, NIGHTLY_JOB_ID, night)
        log.info("nightly retraining of %s: %s; to be retried", night, result.message)
    elif result.outcome == "skipped":
        log.info("nightly retraining of %s skipped: %s", night, result.message)
    retained = await asyncio.to_thread(retention) if retention is not None and first_attempt else None

    def report(lang: str) -> str:
        lines = [result.report("nightly_report", lang, night=night)]
        if backup is not None:
            lines.append(_backup_line(backup, lang))
        if retained is not None:
            lines.append(retained(lang))
        return "\n".join(lines)

    if result.outcome != "busy" or first_attempt:
        await notify(report)
    return result


def _backup_line(backup: Backup | BackupError, lang: str) -> str:
    if isinstance(backup, BackupError):
        return text("backup_failed", lang, error=backup)
    return text("backup_made", lang, name=backup.path.name, summary=describe(backup.manifest))


def install_factory(engine: Engine) -> str | None:
    """On a fresh home, register and serve the factory adapter of the base model (when it ships
    one): the first answer then comes from a trained adapter. Its version, or None."""
    installed = install_factory_adapter(open_registry(), model_folder(engine.settings))
    if installed is None:
        return None
    engine.refresh_production()
    return installed.version


def needs_first_adapter(engine: Engine) -> bool:
    """No adapter served and none ever registered: a base model that has no factory adapter."""
    return engine.adapter_version is None and not open_registry().versions()


async def first_training(retrainer: Retrainer, notify: Notify) -> RetrainOutcome:
    """Train the first adapter now rather than at the next nightly run, telling the admins."""
    await notify(notice("first_training"))
    result = await retrainer.run(trigger="first", requested_by="start")
    await notify(functools.partial(result.report, "first_training_result"))
    return result
