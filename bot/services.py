"""Everything the handlers share, built once: settings, engine, store, conversations, training.

Both transports (Telegram and the console) hold one Services; the nightly scheduler lives here
so it runs on whichever event loop serves the bot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from common.home import Home
from data.settings import DataSettings
from data.store import Store
from inference.engine import Engine
from inference.grounding import FactIndex

from .conversation import Conversations
from .retraining import NIGHTLY_JOB_ID, Retrainer, RetrainOutcome, nightly_retrain
from .settings import BotSettings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: BotSettings
    data_settings: DataSettings
    engine: Engine
    store: Store
    conversations: Conversations
    retrainer: Retrainer
    started: float = field(default_factory=time.time)
    scheduler: AsyncIOScheduler | None = None
    clock: Callable[[], datetime] | None = None  # tests inject the night; None = now, local time

    @classmethod
    def create(cls, settings: BotSettings, engine: Engine, store: Store, *,
               data_settings: DataSettings | None = None, train_args: tuple[str, ...] = ()) -> "Services":
        data_settings = data_settings or DataSettings.load()
        # One index for every chat, over the store's own database (DATABASE_PATH): an admin's
        # correction is retrieved by the next question. GROUNDING is the engine's setting.
        index = (FactIndex(data_settings.home.database, engine.settings.retrieval_min_score)
                 if engine.settings.grounding else None)
        return cls(settings=settings, data_settings=data_settings, engine=engine, store=store,
                   conversations=Conversations(engine, store, settings, index),
                   retrainer=Retrainer(engine, train_args=train_args))

    @property
    def home(self) -> Home:
        return self.engine.settings.home

    def now(self) -> datetime:
        return self.clock() if self.clock else datetime.now(self.settings.zone)

    def start_scheduler(self, notify: Callable[[str], Awaitable[None]]) -> None:
        """Nightly retraining on the running loop; `notify` tells the admins how it went."""
        async def nightly() -> RetrainOutcome | None:
            return await nightly_retrain(self.retrainer, self.store, self.now(), notify)

        scheduler = AsyncIOScheduler(timezone=self.settings.zone, event_loop=asyncio.get_running_loop())
        scheduler.add_job(nightly, self.settings.cron_trigger(), id=NIGHTLY_JOB_ID,
                          name="nightly retraining", replace_existing=True, coalesce=True,
                          max_instances=1, misfire_grace_time=self.settings.retrain_misfire_grace_s)
        scheduler.start()
        self.scheduler = scheduler
        log.info("nightly retraining scheduled (%s, %s); next run %s", self.settings.retrain_cron,
                 self.settings.retrain_timezone, self.next_nightly())

    def next_nightly(self) -> datetime | None:
        job = self.scheduler.get_job(NIGHTLY_JOB_ID) if self.scheduler else None
        return job.next_run_time if job else None

    def close(self) -> None:
        """Stop the scheduler and the answer threads; the engine and store belong to the caller."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.conversations.close()
