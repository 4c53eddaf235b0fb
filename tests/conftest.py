"""Shared fixtures: the real default model (fetched and converted once per machine) and a tiny llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import inference  # noqa: F401  (preloads the optimized BLAS before anything imports mlx)
from inference.modelstore import ensure_default_model

from .models import make_tiny_model

# Converted models survive between runs: fetching and converting SmolLM2 takes ~15 s.
MODELS_CACHE = Path(os.environ.get("FARENSE_TEST_MODELS", Path.home() / ".cache" / "farense-tests" / "models"))


@pytest.fixture(scope="session")
def models_root() -> Path:
    MODELS_CACHE.mkdir(parents=True, exist_ok=True)
    return MODELS_CACHE


@pytest.fixture(scope="session")
def default_model_dir(models_root: Path) -> Path:
    return ensure_default_model(models_root)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_dir)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, models_root):
    """Every test gets its own FARENSE_HOME and cwd, so no developer `.env` or state leaks in."""
    home = tmp_path / "farense-home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith(("TELEGRAM_", "ADMIN_", "MODEL_", "ADAPTER_", "TRAIN_", "BOT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FARENSE_HOME", str(home))
    monkeypatch.setenv("MODELS_DIR", str(models_root))
    monkeypatch.chdir(tmp_path)
    return home


# --- the Telegram bot, end to end: the real Application polling the loopback Bot API -------------

BOT_TOKEN = "123456:FARENSE-bot-test-token"
BOT_ADMIN = 5001


class RunningBot:
    """The bot's Application on its own event loop thread, as in production; tests stay synchronous."""

    def __init__(self, server, application, engine, store):
        import asyncio
        import threading

        self.server, self.application, self.engine, self.store = server, application, engine, store
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bot-loop")
        self._thread.start()

    @property
    def services(self):
        return self.application.bot_data["services"]

    def run(self, coroutine, timeout: float = 60):
        """Run a coroutine on the bot's loop and wait for its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def ask(self, chat_id: int, user_id: int, text: str, timeout: float = 30, **kwargs):
        """Send a message and wait for the bot's final answer (the one with the 👍/👎 buttons)."""
        since = len(self.server.calls())
        self.server.push_message(chat_id, user_id, text, **kwargs)
        final = self.server.wait_for(lambda c: c.ok and c.params.get("chat_id") == chat_id
                                     and "reply_markup" in c.params, timeout, since)
        self.settle()
        return final

    def settle(self, timeout: float = 300) -> None:
        """Wait until every update pushed so far has been fetched and handled completely."""
        state = self.server.state
        with state.cond:  # fetched updates are confirmed (dropped) by the poll that follows them
            if not state.cond.wait_for(lambda: not state.updates, timeout):
                raise TimeoutError("the bot did not fetch its updates")
        self.run(self.application.update_queue.join(), timeout)

    async def _start(self):
        app = self.application
        await app.initialize()
        await app.post_init(app)
        await app.start()
        await app.updater.start_polling(poll_interval=0, timeout=1)

    def start(self) -> "RunningBot":
        self.run(self._start())
        return self

    async def _stop(self):
        app = self.application
        if app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()
        await app.post_shutdown(app)

    def stop(self):
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()


@pytest.fixture
def start_bot(tiny_model_dir, isolated_env, monkeypatch):
    """start_bot(**BotSettings overrides, train_args=...) -> RunningBot on the tiny model."""
    from bot.app import build_application
    from bot.settings import BotSettings
    from data.settings import DataSettings
    from data.store import Store
    from inference.engine import Engine
    from inference.settings import InferenceSettings

    from .botapi import BotApiServer

    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))  # the training pipeline reads it too
    monkeypatch.setenv("GATE_EVAL_LIMIT", "4")  # the gate asks a handful of short questions
    monkeypatch.setenv("GATE_MAX_TOKENS", "8")
    server = BotApiServer(BOT_TOKEN).start()
    running = []

    # A real training run, kept tiny: a few short batches, two validation batches.
    tiny_training = ("--iters", "4", "--batch-size", "2", "--val-batches", "2",
                     "--lora-layers", "2", "--eval-every", "4")

    def start(*, train_args=tiny_training, max_tokens=24, **overrides):
        options = dict(telegram_bot_token=BOT_TOKEN, telegram_base_url=server.base_url,
                       admin_user_ids=(BOT_ADMIN,), stream_edit_interval=0.05) | overrides
        settings = BotSettings.load(**options)
        engine = Engine(InferenceSettings.load(temperature=0.0, max_tokens=max_tokens))
        data_settings = DataSettings.load()
        store = Store(data_settings.home.database)
        application = build_application(settings, engine, store, data_settings=data_settings,
                                        train_args=train_args)
        bot = RunningBot(server, application, engine, store)
        running.append(bot)
        return bot.start()

    yield start
    for bot in running:
        try:
            bot.stop()
        finally:
            bot.engine.close()
            bot.store.close()
    server.stop()
