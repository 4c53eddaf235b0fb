"""Admin operations shared by the Telegram handlers and the console: status, rollback, corrections.

All of it is blocking (files, SQLite, psutil): callers run these functions in a thread.
"""

from __future__ import annotations

import json
import logging
import time

import psutil

from data.builder import MANIFEST, latest_dataset
from data.store import Store
from training.pipeline import pipeline_state
from training.registry import Registry

from .plot import latest_run
from .retraining import duration
from .services import Services

log = logging.getLogger(__name__)


def status_text(app: Services) -> str:
    """The /status report: model and adapter, training, data, memory, uptime, queue."""
    engine = app.engine
    lines = [f"Model: {engine.model_id}",
             f"Adapter served: {engine.adapter_version or 'none (base model)'}",
             f"Adapter in production: {_production(app)}",
             f"Last training: {_last_training(app)}",
             f"Next nightly training: {_next_nightly(app)}",
             f"Conversations: {_counts(app.store)}",
             f"Dataset: {_dataset(app)}",
             f"Memory: {_memory()}",
             f"Uptime: {duration(time.time() - app.started)}",
             f"Queue: {engine.queue_length()} waiting for the model"
             + ("; a training run is in progress" if app.retrainer.running else "")]
    if latest_run(app.home) is None:
        lines.append("Loss plot: no training run yet.")
    return "\n".join(lines)


def rollback(app: Services, admin_id: int) -> str:
    """Put the previous adapter back in production and serve it now."""
    try:
        registry(app).rollback(by=str(admin_id), reason="/rollback")
    except Exception as error:  # nothing to roll back to, or a registry problem: tell the admin
        log.warning("rollback by %s failed: %s", admin_id, error)
        return f"Rollback failed: {error}"
    app.engine.refresh_production()
    return f"Rolled back. Now serving: {app.engine.adapter_version or 'the base model (no adapter)'}"


def correct(store: Store, message_id: int, admin_id: int, fix: str) -> str:
    try:
        store.add_correction(message_id, admin_id, fix)
    except ValueError as error:
        return f"Correction not saved: {error}"
    return "Correction saved — it will be used in the next training run."


def registry(app: Services) -> Registry:
    """The registry, checking adapters against the model actually served."""
    return Registry(app.home, base_model=app.engine.info.path)


def _production(app: Services) -> str:
    try:
        current = registry(app).production()
    except Exception as error:  # a broken pointer is worth reporting, not crashing /status
        return f"unreadable ({error})"
    if current is None:
        return "none (base model)"
    promoted = current.record.get("promoted_at") or current.created_at
    return f"{current.version}, promoted {promoted}" + (f"; {_numbers(current.metrics)}" if current.metrics else "")


def _numbers(values: dict) -> str:
    """A metrics dict in one line: numbers rounded, nested or long values left out."""
    shown = [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
             for key, value in values.items() if isinstance(value, (int, float, str)) and len(str(value)) < 40]
    return ", ".join(shown)


def _last_training(app: Services) -> str:
    state = pipeline_state(app.home)
    running = (f"running now (stage {state.get('stage')}, since {state.get('since')}); "
               if state.get("running") else "")
    last = state.get("last")
    if not last:
        return running + "none yet"
    version = f" {last['version']}" if last.get("version") else ""
    summary = (last.get("message") or "").splitlines()[:1]
    return (f"{running}{last.get('outcome')}{version} ({last.get('trigger')}, finished "
            f"{last.get('finished_at')})" + (f" — {summary[0]}" if summary else ""))


def _next_nightly(app: Services) -> str:
    when = app.next_nightly()
    if when is None:
        return "not scheduled"
    return f"{when:%Y-%m-%d %H:%M %Z} (cron '{app.settings.retrain_cron}', {app.settings.retrain_timezone})"


def _counts(store: Store) -> str:
    c = store.counts()
    return (f"answers {c['messages']} · 👍 {c['feedback_up']} · 👎 {c['feedback_down']} · "
            f"corrections {c['corrections']} · users {c['users']} (opted out {c['opted_out']}) · "
            f"chats {c['chats']}")


def _dataset(app: Services) -> str:
    folder = latest_dataset(app.data_settings)
    if folder is None:
        return "none built yet"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        splits = " · ".join(f"{name} {info['count']}" for name, info in manifest["splits"].items())
        sources = ", ".join(f"{name} {count}" for name, count in manifest["sources"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{folder.name} (unreadable manifest: {error})"
    return f"{folder.name}: {splits} (sources: {sources})"


def _memory() -> str:
    rss = psutil.Process().memory_info().rss
    available = psutil.virtual_memory().available
    return f"process {rss / 2**20:.0f} MiB RSS, {available / 2**30:.1f} GiB available"
