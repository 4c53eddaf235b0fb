"""`python -m bot`: the Telegram bot (long polling), or a console chat when TELEGRAM_BOT_TOKEN is unset.
`python -m bot doctor | service ... | version`: operator commands (bot/cli.py).

A bad setting, a missing model or an unusable database is a short message on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from common.settings import SettingsError, protect_home
from data.backup import BackupError, backup_before_upgrade
from data.settings import DataSettings
from data.store import Store, StoreError
from inference.adapters import AdapterError
from inference.engine import Engine
from inference.loading import ModelLoadError
from inference.modelstore import ModelNotFound
from inference.settings import InferenceSettings
from training.lifecycle.registry import RegistryError
from training.lifecycle.upgrade import upgrade_adapters

from .logs import add_update_context, log_context, setup_logging
from .os_service import hold_running_lock
from .retraining import install_factory
from .settings import BotSettings

EXIT_SETUP = 2

log = logging.getLogger("bot")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    protect_home()
    if argv:
        from .cli import main as command

        return command(argv)
    try:
        inference_settings = InferenceSettings.load()
        data_settings = DataSettings.load()
        settings = BotSettings.load()
    except SettingsError as error:
        return _fail(str(error))
    console = settings.telegram_bot_token is None
    setup_logging(settings.home, settings, console=console)
    for warning in [] if console else settings.telegram_warnings():
        log.warning(warning)
    try:
        backup_before_upgrade(data_settings)  # the Store migrates an older schema at open
        store = Store(data_settings.home.database)
    except (StoreError, BackupError, OSError) as error:
        return _fail(str(error))
    try:
        _upgrade_adapters()  # before the engine serves one trained for the model's other Q/K layout
        engine = Engine(inference_settings)
    except (ModelNotFound, ModelLoadError, AdapterError) as error:
        store.close()
        return _fail(str(error))
    running = hold_running_lock(inference_settings.farense_home)  # restore refuses while it is held
    if (factory := install_factory(engine)) is not None:
        print(f"Fresh home: serving the factory adapter {factory}.", file=sys.stderr)
    try:
        if console:
            from .console import run_console
            from .services import Services

            with log_context(chat=settings.console_user_id):  # the console user's chat
                asyncio.run(run_console(Services.create(settings, engine, store, data_settings=data_settings)))
        else:
            from telegram.error import InvalidToken, TelegramError

            from .app import ALLOWED_UPDATES, build_application
            from .handlers.errors import redact

            application = build_application(settings, engine, store, data_settings=data_settings)
            add_update_context(application)  # log lines carry the chat they belong to
            try:
                application.run_polling(allowed_updates=ALLOWED_UPDATES)
            except InvalidToken:  # PTB's message quotes the token itself: never print it
                return _fail("Telegram refused TELEGRAM_BOT_TOKEN (401 Unauthorized); check it with @BotFather")
            except TelegramError as error:  # e.g. Telegram unreachable at start-up
                secret = settings.telegram_bot_token.get_secret_value()
                return _fail(f"Telegram: {redact(f'{type(error).__name__}: {error}', secret)}")
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
        store.close()
        running.close()
    return 0


def _upgrade_adapters() -> None:
    """Migrate the registry's adapters to the base model's Q/K layout, backed up first. A failure
    is reported and leaves them as they are: the engine then refuses them, saying how to migrate."""
    try:
        done = upgrade_adapters()
    except ModelNotFound:  # the engine reports it
        raise
    except (RegistryError, BackupError, OSError, ValueError) as error:
        log.error("could not migrate the adapters to the base model's Q/K layout: %s", error)
        print(f"warning: could not migrate the adapters to the base model's Q/K layout: {error}", file=sys.stderr)
        return
    for line in done:
        log.info("upgrade: %s", line)
        print(f"Upgrade: {line}", file=sys.stderr)


def _fail(message: str) -> int:
    for line in message.splitlines():
        print(f"error: {line}", file=sys.stderr)
    return EXIT_SETUP


if __name__ == "__main__":
    sys.exit(main())
