"""Questions (text), everything else users send (stickers, photos, voice…), and 👍/👎 votes."""

from __future__ import annotations

import asyncio
import logging
import re

from telegram import Bot, Message, MessageEntity, Update
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from ..conversation import Answer, Asker
from ..delivery import StreamingReply, feedback_buttons, typing
from ..texts import text
from . import services_of, user_language

log = logging.getLogger(__name__)

# ASCII digits that fit SQLite's integer, and nothing after the vote (`$` would allow a newline).
FEEDBACK_PATTERN = r"^fb:[0-9]{1,18}:(up|down)\Z"


def addressed(message: Message, bot: Bot) -> bool:
    """Private chats: always. Groups: when the bot is @mentioned or one of its messages replied to."""
    if message.chat.type == ChatType.PRIVATE:
        return True
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == bot.id:
        return True
    mention = f"@{bot.username}".lower()
    entities = message.parse_entities([MessageEntity.MENTION]) or message.parse_caption_entities(
        [MessageEntity.MENTION]
    )
    return any(value.lower() == mention for value in entities.values())


async def on_question(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message, user = update.message, update.effective_user
    if not addressed(message, context.bot):
        return
    lang, services = user_language(update), services_of(context)
    question = re.sub(rf"@{re.escape(context.bot.username)}\b", "", message.text, flags=re.I).strip()
    if not question:
        await message.reply_text(text("help", lang, backup_days=services.data_settings.backup_max_age_days))
        return
    if len(question) > services.settings.max_question_chars:
        await message.reply_text(
            text("too_long", lang, length=len(question), limit=services.settings.max_question_chars)
        )
        return
    allowed, tell = services.conversations.rate_limiter.check(user.id)
    if not allowed:
        log.info(
            "rate limit: user %s asked more than %d questions in a minute",
            user.id,
            services.settings.rate_limit_per_minute,
        )
        if tell:
            await message.reply_text(text("rate_limited", lang))
        return
    asker = Asker(
        chat_id=message.chat_id,
        user_id=user.id,
        name=user.full_name,
        language=user.language_code,
        chat_type=message.chat.type,
        chat_title=message.chat.title,
    )
    reply = StreamingReply(context.bot, message, services.settings.stream_edit_interval)
    delivering: list[Answer] = []

    async def deliver(answer: Answer) -> None:
        delivering.append(answer)
        stored = answer.message_id is not None  # not when the asker /forgot meanwhile: nothing to rate
        sent = await reply.finish(
            answer.reply or text("empty_answer", lang), feedback_buttons(answer.message_id) if stored else None
        )
        if stored:
            await asyncio.to_thread(services.store.attach_telegram_id, answer.message_id, sent.message_id)

    try:  # no await before ask(): it is what keeps a chat's questions (and answers) in order
        await services.conversations.ask(
            asker, question, reply.partial, busy=lambda: typing(context.bot, message.chat_id), deliver=deliver
        )
    except Exception:
        if delivering:  # answered and logged, but Telegram refused it: for the error handler
            raise
        log.exception("answering a question in chat %s failed", message.chat_id)
        await reply.finish(text("failed", lang))


async def on_non_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    if addressed(update.message, context.bot):
        await update.message.reply_text(text("non_text", user_language(update)))


async def on_feedback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Record a vote; the store refuses anyone but the asker (callback data can be forged)."""
    query = update.callback_query
    if not re.match(FEEDBACK_PATTERN, query.data or ""):  # PTB hands over data-less queries too
        await query.answer()
        return
    _, message_id, vote = query.data.split(":")
    recorded = await asyncio.to_thread(
        services_of(context).store.set_feedback, int(message_id), query.from_user.id, 1 if vote == "up" else -1
    )
    if not recorded:
        log.info("refused a vote by user %s on message %s", query.from_user.id, message_id)
    await query.answer(text("vote_thanks" if recorded else "vote_refused", user_language(update)))


async def on_stale_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any other button (old or forged data): stop the client's spinner, do nothing."""
    await update.callback_query.answer()
