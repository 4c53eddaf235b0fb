"""All the Telegram wiring in one place: handlers, error handler, rate limiter, start and stop.

Long polling in production (`run_polling(allowed_updates=ALLOWED_UPDATES)`); the handlers still
ignore edited messages and channel posts themselves, whatever the poller asks for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable

from telegram import Bot, BotCommand, BotCommandScopeChat, Update
from telegram.error import TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from data.settings import DataSettings
from data.store import Store
from inference.engine import Engine

from .handlers import admin, commands, limits, questions
from .handlers.errors import on_error
from .scheduler import start_nightly
from .services import Services
from .settings import BotSettings
from .texts import ADMIN_COMMANDS, PUBLIC_COMMANDS, Notice, language, notice

log = logging.getLogger(__name__)

ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
MAX_RETRIES = 3  # a 429 from Telegram is waited out (retry_after) and retried this often
# Their INFO/DEBUG lines carry request URLs, and a Bot API URL contains the token.
CHATTY_LOGGERS = ("httpx", "httpcore", "telegram")


def build_application(
    settings: BotSettings,
    engine: Engine,
    store: Store,
    *,
    data_settings: DataSettings | None = None,
    train_args: Iterable[str] = (),
) -> Application:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is not set")
    application = (
        ApplicationBuilder()
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(settings.telegram_base_url)
        .rate_limiter(AIORateLimiter(max_retries=MAX_RETRIES))
        .concurrent_updates(True)  # commands stay responsive while answers are generated
        .job_queue(None)  # nightly retraining has its own scheduler (bot/scheduler.py)
        .post_init(_post_init)
        .post_shutdown(_post_shutdown)
        .build()
    )
    application.bot_data["services"] = Services.create(
        settings, engine, store, data_settings=data_settings, train_args=tuple(train_args)
    )
    application.add_handler(TypeHandler(Update, limits.limit_updates), group=-1)  # before all the others
    message = filters.UpdateType.MESSAGE  # not edits, not channel posts
    for name, callback in (
        ("start", commands.help_command),
        ("help", commands.help_command),
        ("reset", commands.reset),
        ("forget", commands.forget),
        ("optout", commands.opt_out),
        ("optin", commands.opt_in),
        ("status", admin.status),
        ("retrain", admin.retrain),
        ("rollback", admin.rollback),
        ("correct", admin.correct),
        ("facts", admin.facts),
        ("fact_remove", admin.fact_remove),
    ):
        application.add_handler(CommandHandler(name, callback, filters=message))
    application.add_handler(CallbackQueryHandler(questions.on_feedback, pattern=questions.FEEDBACK_PATTERN))
    application.add_handler(CallbackQueryHandler(questions.on_stale_button))
    application.add_handler(MessageHandler(message & filters.TEXT & ~filters.COMMAND, questions.on_question))
    application.add_handler(MessageHandler(message & filters.ATTACHMENT, questions.on_non_text))
    application.add_error_handler(on_error)
    return application


async def _post_init(application: Application) -> None:
    services: Services = application.bot_data["services"]
    await register_commands(application.bot, services.settings.admin_user_ids)
    tell_admins = functools.partial(notify_admins, application.bot, services.settings.admin_user_ids, services.store)
    start_nightly(services, tell_admins)
    loop = asyncio.get_running_loop()

    def adapter_refused(reason: str) -> None:  # on the engine's thread, or a handler's worker thread
        asyncio.run_coroutine_threadsafe(tell_admins(notice("adapter_refused", reason=reason)), loop)

    services.engine.on_refused = adapter_refused
    if services.engine.refused:  # refused before the bot started (the engine loads first)
        await tell_admins(notice("adapter_refused", reason=services.engine.refused))


async def _post_shutdown(application: Application) -> None:
    services: Services = application.bot_data["services"]
    services.engine.on_refused = None
    await asyncio.to_thread(services.close)


async def register_commands(bot: Bot, admin_ids: Iterable[int]) -> None:
    """Public commands for everyone (EN, and PT for Portuguese clients); admin ones only in admins' chats."""
    public = {lang: [BotCommand(*pair) for pair in pairs] for lang, pairs in PUBLIC_COMMANDS.items()}
    await bot.set_my_commands(public["en"])
    await bot.set_my_commands(public["pt"], language_code="pt")
    for admin_id in admin_ids:
        try:
            for lang, code in (("en", None), ("pt", "pt")):
                await bot.set_my_commands(
                    public[lang] + [BotCommand(*pair) for pair in ADMIN_COMMANDS[lang]],
                    scope=BotCommandScopeChat(admin_id),
                    language_code=code,
                )
        except TelegramError as error:  # an admin who never started the bot has no chat yet
            log.warning("could not set the admin commands for %s: %s", admin_id, error)


async def notify_admins(bot: Bot, admin_ids: Iterable[int], store: Store, message: Notice) -> None:
    """Send `message` to every admin in the language they last wrote to the bot in (English when
    the store has none: an admin who never wrote, or /forgot)."""
    for admin_id in admin_ids:
        lang = language(await asyncio.to_thread(store.user_language, admin_id))
        try:
            await bot.send_message(admin_id, message(lang))
        except TelegramError as error:
            log.warning("could not tell admin %s: %s", admin_id, error)
