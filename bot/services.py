"""Everything the handlers share, built once: settings, engine, store, conversations, training.

Both transports (Telegram and the console) hold one Services; the nightly schedule that runs on
their event loop is defined in bot/scheduler.py and kept here only to be shut down with the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from common.home import Home
from data.settings import DataSettings
from data.store import Store
from inference.engine import Engine
from inference.grounding import FactIndex

from .conversation import Conversations
from .retraining import Retrainer
from .settings import BotSettings


@dataclass
class Services:
    settings: BotSettings
    data_settings: DataSettings
    engine: Engine
    store: Store
    conversations: Conversations
    retrainer: Retrainer
    started: float = field(default_factory=time.time)
    scheduler: AsyncIOScheduler | None = None  # bot/scheduler.py start_nightly
    clock: Callable[[], datetime] | None = None  # tests inject the night; None = now, local time

    @classmethod
    def create(
        cls,
        settings: BotSettings,
        engine: Engine,
        store: Store,
        *,
        data_settings: DataSettings | None = None,
        train_args: tuple[str, ...] = (),
    ) -> Services:
        data_settings = data_settings or DataSettings.load()
        # One index for every chat, over the store's own database (DATABASE_PATH): an admin's
        # correction is retrieved by the next question. GROUNDING is the engine's setting.
        index = (
            FactIndex(data_settings.home.database, engine.settings.retrieval_min_score)
            if engine.settings.grounding
            else None
        )
        return cls(
            settings=settings,
            data_settings=data_settings,
            engine=engine,
            store=store,
            conversations=Conversations(engine, store, settings, index),
            retrainer=Retrainer(engine, train_args=train_args),
        )

    @property
    def home(self) -> Home:
        return self.engine.settings.home

    def now(self) -> datetime:
        return self.clock() if self.clock else datetime.now(self.settings.zone)

    def close(self) -> None:
        """Stop the scheduler and the answer threads; the engine and store belong to the caller."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.conversations.close()
