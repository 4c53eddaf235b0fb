"""Shared fixtures: the real default model (fetched and converted once per machine), a tiny llama,
an isolated environment for every test, training datasets, and the bot on the loopback Bot API.

Helpers that are not fixtures live in helpers.py and models.py; test modules import those, never
each other.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from pydantic_settings import BaseSettings

import inference  # noqa: F401  (preloads the optimized BLAS before anything imports mlx)
from inference.modelstore import ensure_default_model

from .helpers import BOT_ADMIN, BOT_TOKEN, BOT_TRAINING, RunningBot, write_dataset
from .models import hf_layout_twin, make_tiny_model

# Property tests check behaviour, not speed (that is bench/'s): no per-example deadline, which a
# machine busy with other work misses (hypothesis's default is 200 ms).
hypothesis_settings.register_profile("farense", deadline=None)
hypothesis_settings.load_profile("farense")

# Converted models survive between runs: fetching and converting SmolLM2 takes ~15 s.
MODELS_CACHE = Path(os.environ.get("FARENSE_TEST_MODELS", Path.home() / ".cache" / "farense-tests" / "models"))
REPO = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ("bot", "common", "data", "inference", "training")
SETTINGS_CLASS = re.compile(r"^class \w+\(\w*Settings\):", re.MULTILINE)


def settings_variables() -> set[str]:
    """Every environment variable a settings class of ours reads, found from the classes themselves:
    the modules that define one are imported, then every subclass of BaseSettings in our packages."""
    for package in OUR_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if SETTINGS_CLASS.search(path.read_text(encoding="utf-8")):
                importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
    found, classes = set(), [BaseSettings]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if cls.__module__.split(".")[0] in OUR_PACKAGES:
            prefix = cls.model_config.get("env_prefix", "")
            found |= {f"{prefix}{name}".upper() for name in cls.model_fields}
    return found


SETTINGS_VARIABLES = settings_variables()


def pytest_collection_modifyitems(items):
    """The `model` marker goes on every test that runs the real SmolLM2 itself (asks for
    `default_model_dir`), so `-m "not model"` leaves them out. (The tiny llama is built from its
    tokenizer, so the model is still fetched once for the tests that use that.)"""
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and "default_model_dir" in inspect.signature(function).parameters:
            item.add_marker(pytest.mark.model)


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


@pytest.fixture
def tiny_pair(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny llama (llama.cpp's interleaved Q/K layout) under a converter-1 folder name, and its
    Hugging Face-layout twin under the converter-2 name, side by side as in a models folder."""
    old = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model_dir, old)
    return old, hf_layout_twin(old, tmp_path / "models" / "tiny-c2")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, models_root):
    """Every test gets its own FARENSE_HOME and cwd, and none of the developer's settings (from the
    environment or a `.env`), so no state leaks in."""
    home = tmp_path / "farense-home"
    home.mkdir()
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FARENSE_HOME", str(home))
    monkeypatch.setenv("MODELS_DIR", str(models_root))
    monkeypatch.setenv("FIRST_TRAINING_AT_START", "false")  # a bot on the tiny model would train at start
    # The tiny random model's words are what most tests follow; ANSWER_FROM=fact has its own tests.
    monkeypatch.setenv("ANSWER_FROM", "model")
    monkeypatch.chdir(tmp_path)
    return home


# --- the knowledge base ---------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path) -> Path:
    """A fresh store: opening it creates the schema and imports the seed facts."""
    from data.store import Store

    path = tmp_path / "farense.db"
    Store(path).close()
    return path


@pytest.fixture
def index(db_path):
    """Retrieval over `db_path`'s facts."""
    from inference.grounding import FactIndex

    opened = FactIndex(db_path)
    yield opened
    opened.close()


# --- training ----------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "dataset")


@pytest.fixture
def tiny_env(monkeypatch, tiny_model_dir) -> dict:
    """MODEL_PATH = the tiny llama, for in-process runs and for `python -m training` children."""
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_dir))
    return dict(os.environ)


# --- the Telegram bot, end to end: the real Application polling the loopback Bot API -------------


@pytest.fixture
def roomy_server(monkeypatch):
    """socketserver listens with a backlog of 5: a burst of concurrent requests beyond it is reset
    (httpx.ReadError), which Telegram's servers never do. Widen it before the server starts."""
    from .botapi import transport

    monkeypatch.setattr(transport.HttpServer, "request_queue_size", 1024)


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

    def start(*, train_args=("--iters", "4", *BOT_TRAINING), max_tokens=24, **overrides):
        options = (
            dict(
                telegram_bot_token=BOT_TOKEN,
                telegram_base_url=server.base_url,
                admin_user_ids=(BOT_ADMIN,),
                stream_edit_interval=0.05,
            )
            | overrides
        )
        settings = BotSettings.load(**options)
        engine = Engine(InferenceSettings.load(temperature=0.0, max_tokens=max_tokens))
        data_settings = DataSettings.load()
        store = Store(data_settings.home.database)
        application = build_application(settings, engine, store, data_settings=data_settings, train_args=train_args)
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
