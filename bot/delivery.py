"""Showing an answer on Telegram while it is generated, then delivering it in full.

Private chats get ephemeral drafts (sendMessageDraft); groups get one message that is edited as
text arrives. Both are throttled to STREAM_EDIT_INTERVAL and best effort: a failed preview is
logged and skipped, only the final message must arrive. Text is always sent plain (no parse mode),
so model output can never be rejected as malformed markup. Link previews are off: a source line's
link would otherwise add a Wikipedia card under every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions, Message, ReplyParameters
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, TelegramError

from .splitting import split_text

log = logging.getLogger(__name__)

TYPING_EVERY_S = 4.0  # Telegram shows "typing…" for 5 s per chat action
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


def feedback_buttons(message_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("👍", callback_data=f"fb:{message_id}:up"),
                InlineKeyboardButton("👎", callback_data=f"fb:{message_id}:down"),
            ]
        ]
    )


@contextlib.asynccontextmanager
async def typing(bot: Bot, chat_id: int):
    """Keep the "typing…" indicator on while the body runs."""

    async def keep_typing() -> None:
        while True:
            await asyncio.sleep(TYPING_EVERY_S)
            with contextlib.suppress(TelegramError):
                await bot.send_chat_action(chat_id, ChatAction.TYPING)

    with contextlib.suppress(TelegramError):
        await bot.send_chat_action(chat_id, ChatAction.TYPING)
    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()


class StreamingReply:
    def __init__(self, bot: Bot, question: Message, interval: float):
        self.bot = bot
        self.chat_id = question.chat_id
        self.question_id = question.message_id
        self.private = question.chat.type == ChatType.PRIVATE
        self.interval = interval
        self._last_push = -math.inf
        self._shown = ""
        self._preview: Message | None = None  # groups: the message edited while streaming

    async def partial(self, text: str) -> None:
        """Show the text so far, unless the last preview was less than an interval ago."""
        now = time.monotonic()
        if now - self._last_push < self.interval:
            return
        self._last_push = now
        preview = split_text(text)[-1]  # past 4096 characters, the part being written
        if preview == self._shown:
            return
        try:
            if self.private:
                await self.bot.send_message_draft(self.chat_id, draft_id=self.question_id, text=preview)
            elif self._preview is None:
                self._preview = await self.bot.send_message(self.chat_id, preview, reply_parameters=self._reply_to())
            else:
                await self._preview.edit_text(preview)
            self._shown = preview
        except TelegramError as error:
            log.warning("streaming preview in chat %s failed: %s", self.chat_id, error)

    async def finish(self, text: str, markup: InlineKeyboardMarkup | None = None) -> Message:
        """Deliver the whole text (split if needed); `markup` goes on the last part, returned."""
        parts = split_text(text)
        sent = None
        if self._preview is not None:
            sent = await self._edit_preview(parts[0], markup if len(parts) == 1 else None)
            if sent is not None:
                parts = parts[1:]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            sent = await self.bot.send_message(
                self.chat_id,
                part,
                reply_markup=markup if last else None,
                link_preview_options=NO_PREVIEW,
                reply_parameters=self._reply_to() if sent is None else None,
            )
        return sent

    async def _edit_preview(self, text: str, markup: InlineKeyboardMarkup | None) -> Message | None:
        try:
            return await self._preview.edit_text(text, reply_markup=markup, link_preview_options=NO_PREVIEW)
        except BadRequest as error:
            if "not modified" in str(error).lower():
                return self._preview
            log.warning("final edit in chat %s failed (%s); sending a new message", self.chat_id, error)
            return None

    def _reply_to(self) -> ReplyParameters | None:
        """In groups, answers quote the question so everyone sees what they answer."""
        if self.private:
            return None
        return ReplyParameters(self.question_id, allow_sending_without_reply=True)
