"""Admin commands: /status, /retrain, /rollback, /correct, /facts, /fact_remove — ADMIN_USER_IDS only,
every attempt logged, and only in a private chat with the bot: their replies (a fan's 👎 question in
/status, facts, training progress) are for the admin's eyes. /correct is the exception: it answers
one of the bot's replies where it was posted, and says only what the admin wrote."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from telegram import Message, Update
from telegram.constants import ChatType
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from .. import admin_ops
from ..plot import accuracy_plot, latest_run, loss_plot, registered_versions
from ..retraining import ProgressText
from ..splitting import split_text
from ..texts import text
from . import services_of, user_language

log = logging.getLogger(__name__)

IN_GROUPS = ("correct",)  # admin commands that also work in groups


def admin_only(handler):
    """Refuse non-admins politely; record who tried what in the store and the log."""

    @functools.wraps(handler)
    async def guarded(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        services, user = services_of(context), update.effective_user
        command = handler.__name__
        allowed = services.settings.is_admin(user.id)
        await asyncio.to_thread(services.store.log_admin_event, user.id, command, allowed)
        if not allowed:
            log.warning("refused /%s to user %s (not an admin)", command, user.id)
            await update.message.reply_text(text("not_admin", user_language(update)))
            return
        if update.effective_chat.type != ChatType.PRIVATE and command not in IN_GROUPS:
            log.info("admin %s: /%s in a group, pointed to the private chat", user.id, command)
            await update.message.reply_text(
                text("admin_private_only", user_language(update), username=context.bot.username)
            )
            return
        log.info("admin %s: /%s", user.id, command)
        # The language of the messages the bot sends the admin unasked (nightly report, refusals).
        await services.conversations.remember_user(user.id, user.full_name, user.language_code)
        await handler(update, context)

    return guarded


@admin_only
async def status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    services, lang = services_of(context), user_language(update)
    await update.message.reply_text(await asyncio.to_thread(admin_ops.status_text, services, lang))
    run = latest_run(services.home)
    png = await asyncio.to_thread(loss_plot, run) if run is not None else None
    if png is not None:
        await update.message.reply_photo(png, caption=text("loss_caption", lang, run=run.name))
    png = await asyncio.to_thread(lambda: accuracy_plot(registered_versions(services.home)))
    if png is not None:
        await update.message.reply_photo(png, caption=text("accuracy_caption", lang))


@admin_only
async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/retrain` continues the production adapter on what is new (or trains from scratch when it
    must), `/retrain full` trains from scratch."""
    services, lang = services_of(context), user_language(update)
    argument = _argument(update.message).lower()
    if argument not in ("", "full"):
        await update.message.reply_text(text("retrain_usage", lang))
        return
    if services.retrainer.running:
        await update.message.reply_text(text("busy", lang))
        return
    progress = ProgressEditor(
        await update.message.reply_text(text("retraining", lang)), lang, services.settings.retrain_progress_interval
    )
    loop = asyncio.get_running_loop()
    result = await services.retrainer.run(
        trigger="admin",
        requested_by=str(update.effective_user.id),
        on_progress=lambda event: loop.call_soon_threadsafe(progress.update, event),
        full=argument == "full",
    )
    await progress.finish(result.report("retrain_result", lang))


@admin_only
async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/rollback` serves the previous adapter, `/rollback v0003` that version."""
    services = services_of(context)
    await update.message.reply_text(
        await asyncio.to_thread(
            admin_ops.rollback,
            services,
            update.effective_user.id,
            _argument(update.message),
            user_language(update),
        )
    )


@admin_only
async def correct(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Reply to one of the bot's answers with `/correct <better answer>`."""
    services, message = services_of(context), update.message
    command_and_fix = message.text.split(maxsplit=1)
    fix = command_and_fix[1].strip() if len(command_and_fix) > 1 else ""
    target = message.reply_to_message
    logged = None
    if target is not None and fix:
        logged = await asyncio.to_thread(services.store.message_by_telegram_id, message.chat_id, target.message_id)
    if logged is None:
        await message.reply_text(text("correct_usage", user_language(update)))
        return
    await message.reply_text(
        await asyncio.to_thread(
            admin_ops.correct, services, logged.id, update.effective_user.id, fix, user_language(update)
        )
    )


@admin_only
async def facts(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/facts` lists the newest facts of the knowledge base, `/facts <words>` searches it,
    `/facts history <id>` and `/facts restore <id> <revision>` show and restore a fact's revisions."""
    report = await asyncio.to_thread(
        admin_ops.facts_text,
        services_of(context),
        _argument(update.message),
        update.effective_user.id,
        user_language(update),
    )
    for part in split_text(report):
        await update.message.reply_text(part)


@admin_only
async def fact_remove(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/fact_remove <id>` takes a fact out of the answers."""
    await update.message.reply_text(
        await asyncio.to_thread(
            admin_ops.remove_fact_text,
            services_of(context),
            _argument(update.message),
            update.effective_user.id,
            user_language(update),
        )
    )


def _argument(message: Message) -> str:
    """What follows the command (`/facts@bot hassan nader` -> "hassan nader")."""
    parts = (message.text or "").split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


class ProgressEditor:
    """Edits one message with the latest progress, at most every `interval` seconds."""

    def __init__(self, message: Message, lang: str, interval: float):
        self.message = message
        self.interval = interval
        self.progress = ProgressText(lang)
        self._pending: asyncio.Task | None = None
        self._last = time.monotonic()

    def update(self, event: dict) -> None:
        self.progress.update(event)
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._edit_soon())

    async def finish(self, final: str) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
        try:
            await self.message.edit_text(final)
        except TelegramError as error:  # the progress message is gone: say it in a new one
            log.warning("final progress edit failed (%s); sending the result instead", error)
            await self.message.get_bot().send_message(self.message.chat_id, final)

    async def _edit_soon(self) -> None:
        await asyncio.sleep(max(0.0, self._last + self.interval - time.monotonic()))
        self._last = time.monotonic()
        try:
            await self.message.edit_text(self.progress.render())
        except TelegramError as error:  # e.g. "not modified": progress is best effort
            log.debug("progress edit failed: %s", error)
