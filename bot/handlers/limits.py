"""One rate limit for every kind of update (commands, votes, stickers, questions), per user.

Runs before every other handler (group -1 in bot/app.py): an update over the limit stops there, and
the user is told once per window. Group messages the bot ignores anyway (not a command, not
addressed to it) are not counted. Admins are not limited: the operator named them, their commands
are audited, and a /rollback must never wait for a window to pass.
"""

from __future__ import annotations

import logging

from telegram import Update
from telegram.ext import ApplicationHandlerStop, ContextTypes

from ..texts import text
from . import services_of, user_language
from .questions import addressed

log = logging.getLogger(__name__)


async def limit_updates(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    services, user, message = services_of(context), update.effective_user, update.message
    if user is None or services.settings.is_admin(user.id):
        return
    if message is not None and not _command(message) and not addressed(message, context.bot):
        return
    allowed, tell = services.conversations.update_limiter.check(user.id)
    if allowed:
        return
    log.info("rate limit: user %s sent more than %d updates in a minute", user.id, services.settings.updates_per_minute)
    if tell and message is not None:
        await message.reply_text(text("rate_limited", user_language(update)))
    elif update.callback_query is not None:  # stops the button's spinner; the notice only once
        await update.callback_query.answer(text("rate_limited", user_language(update)) if tell else None)
    raise ApplicationHandlerStop


def _command(message) -> bool:
    return bool(message.text and message.text.startswith("/"))
