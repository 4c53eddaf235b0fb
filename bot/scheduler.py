"""The nightly retraining schedule: RETRAIN_CRON in RETRAIN_TIMEZONE, on the event loop that serves
the bot (Telegram or the console), so it runs wherever the bot runs.

A missed night (the bot was down at 03:00) still runs when the bot comes back within
RETRAIN_MISFIRE_GRACE_S; later than that, a start finding the last nightly run more than a day old
catches up at once, or when RETRAIN_QUIET_HOURS (when fans chat) are over. A night that finds
another run in progress (an admin's /retrain) retries RETRAIN_RETRY_MINUTES later, until the quiet
hours begin. Runs never overlap; the store's job claim keeps a night from running twice.
A base model with no adapter at all (another MODEL_PATH: only the embedded default ships a factory
adapter) trains its first one right after start (FIRST_TRAINING_AT_START).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import date, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .retention import retention_report
from .retraining import (
    FIRST_JOB_ID,
    NIGHTLY_JOB_ID,
    Notify,
    RetrainOutcome,
    first_training,
    needs_first_adapter,
    nightly_retrain,
)
from .services import Services
from .texts import notice

log = logging.getLogger(__name__)

CATCH_UP_JOB_ID = "nightly-catch-up"
RETRY_JOB_ID = "nightly-retry"


def start_nightly(services: Services, notify: Notify) -> None:
    """Schedule nightly retraining on the running loop; `notify` tells the admins how it went.
    The scheduler is kept in `services.scheduler`; `Services.close` shuts it down."""
    settings = services.settings

    async def nightly() -> RetrainOutcome | None:
        result = await nightly_retrain(
            services.retrainer,
            services.store,
            services.now(),
            notify,
            functools.partial(retention_report, services.data_settings, services.settings),
        )
        if result is not None and result.outcome == "busy":
            retry = services.now() + timedelta(minutes=settings.retrain_retry_minutes)
            if settings.in_quiet_hours(retry):
                await notify(notice("nightly_busy_all_night", night=services.now().date()))
            else:
                scheduler.add_job(
                    nightly,
                    "date",
                    run_date=retry,
                    id=RETRY_JOB_ID,
                    name="nightly retry",
                    replace_existing=True,
                    misfire_grace_time=None,
                )
                log.info("nightly retraining retries at %s", retry)
        return result

    scheduler = AsyncIOScheduler(timezone=settings.zone, event_loop=asyncio.get_running_loop())
    scheduler.add_job(
        nightly,
        settings.cron_trigger(),
        id=NIGHTLY_JOB_ID,
        name="nightly retraining",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=settings.retrain_misfire_grace_s,
    )
    catch_up = missed_night(services)
    if catch_up is not None:
        scheduler.add_job(
            nightly, "date", run_date=catch_up, id=CATCH_UP_JOB_ID, name="missed nightly run", misfire_grace_time=None
        )
        log.info("the last nightly run is more than a day old: catching up at %s", catch_up)
    if settings.first_training_at_start and needs_first_adapter(services.engine):
        scheduler.add_job(
            first_training,
            "date",
            args=(services.retrainer, notify),
            id=FIRST_JOB_ID,
            name="first adapter",
            misfire_grace_time=None,
        )
    scheduler.start()
    services.scheduler = scheduler
    log.info(
        "nightly retraining scheduled (%s, %s); next run %s",
        settings.retrain_cron,
        settings.retrain_timezone,
        next_nightly(services),
    )


def next_nightly(services: Services) -> datetime | None:
    job = services.scheduler.get_job(NIGHTLY_JOB_ID) if services.scheduler else None
    return job.next_run_time if job else None


def missed_night(services: Services) -> datetime | None:
    """When to catch up a nightly run the bot was down for: now, or when the quiet hours end; None
    when the last one ran last night or later, or none ever did (a fresh home starts from the
    factory adapter or trains its first one at start)."""
    last = services.store.last_job_period(NIGHTLY_JOB_ID)
    now = services.now()
    if last is None or date.fromisoformat(last) >= now.date() - timedelta(days=1):
        return None
    return services.settings.quiet_hours_end(now)
