"""The application's error handler: log what failed, with the traceback, never the token."""

from __future__ import annotations

import logging
import traceback

from telegram import Update
from telegram.ext import ContextTypes

log = logging.getLogger(__name__)


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "<token>") if secret else text


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    error = context.error
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    where = "while polling"
    if isinstance(update, Update):
        chat = update.effective_chat
        where = f"handling update {update.update_id}" + (f" in chat {chat.id}" if chat else "")
    log.error("error %s:\n%s", where, redact(details, context.bot.token))
