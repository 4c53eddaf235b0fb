"""Test-side update injection: builds Telegram-shaped Update JSON for the bot to poll.

Entities are derived the way Telegram derives them (commands, @mentions, UTF-16 offsets), so
PTB's CommandHandler and filters see exactly what they would in production.
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

from .formatting import utf16_len
from .media import make_png

_COMMAND = re.compile(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
_MENTION = re.compile(r"(?<![\w@/])@[A-Za-z0-9_]{5,32}")


def auto_entities(text: str) -> list[dict]:
    """A bot_command entity for a leading /command and a mention entity per @username."""
    entities = []
    command = _COMMAND.match(text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": utf16_len(command[0])})
    for m in _MENTION.finditer(text, command.end() if command else 0):
        entities.append({"type": "mention", "offset": utf16_len(text[: m.start()]), "length": utf16_len(m[0])})
    return entities


def _user(user_id: int, first_name: str, language_code: str, username: str | None) -> dict:
    user = dict(id=user_id, is_bot=False, first_name=first_name, language_code=language_code)
    if username:
        user["username"] = username
    return user


def _chat(chat_id: int, user: dict, chat_type: str, chat_title: str | None) -> dict:
    if chat_type == "private":
        if chat_id != user["id"]:
            raise ValueError("a private chat's id is the user's id")
        names = {k: user[k] for k in ("first_name", "username") if k in user}
        return {"id": chat_id, "type": "private", **names}
    if chat_type not in ("group", "supergroup") or chat_id >= 0:
        raise ValueError("only private, group and supergroup chats; groups have negative ids")
    return {"id": chat_id, "type": chat_type, "title": chat_title or "Farense Adeptos"}


class UpdateInjector:
    """Mixin for BotApiServer: the push_* helpers tests use to play the users' side."""

    state: Any

    def push_message(
        self,
        chat_id: int,
        user_id: int,
        text: str | None = None,
        chat_type: str = "private",
        first_name: str = "Ana",
        username: str | None = None,
        language_code: str = "pt",
        reply_to_message: dict | int | None = None,
        entities: list[dict] | None = None,
        photo: bool = False,
        sticker: bool = False,
        forward_origin: dict | None = None,
        chat_title: str | None = None,
        edited: bool = False,
    ) -> tuple[dict, dict]:
        """Queue a user's message (or an edit of their latest one); returns (update, message)."""
        if sticker and (text or photo):
            raise ValueError("a sticker message carries no text or photo")
        state = self.state
        user = _user(user_id, first_name, language_code, username)
        with state.cond:
            state.users[user_id] = user
            title = chat_title or state.chats.get(chat_id, {}).get("title")
            chat = state.chats[chat_id] = _chat(chat_id, user, chat_type, title)
            message = {"message_id": 0, "from": user, "chat": chat, "date": int(time.time())}
            if edited:
                mine = [
                    m for (c, _), m in state.messages.items()
                    if c == chat_id and m["from"]["id"] == user_id
                ]  # fmt: skip
                if not mine:
                    raise ValueError("edited=True needs an earlier message of the user there")
                original = mine[-1]
                message.update(message_id=original["message_id"], date=original["date"])
                message["edit_date"] = int(time.time())
            else:
                message["message_id"] = state.next_message_id(chat_id)
            if reply_to_message is not None:
                message["reply_to_message"] = self._reply_copy(chat_id, reply_to_message)
            if forward_origin:
                message["forward_origin"] = forward_origin
            text_key = "caption" if photo else "text"
            if text:
                message[text_key] = text
                found = auto_entities(text) if entities is None else entities
                if found:
                    message["caption_entities" if photo else "entities"] = found
            if photo:
                message["photo"] = [self._photo_size(w) for w in (90, 320)]
            if sticker:
                message["sticker"] = self._sticker()
            state.save_message(message)
            update = state.enqueue({"edited_message" if edited else "message": message})
            return update, copy.deepcopy(message)

    def push_callback_query(self, chat_id: int, user_id: int, message_id: int, data: str) -> dict:
        """Queue an inline-button press on a message; an unknown message arrives as inaccessible."""
        state = self.state
        with state.cond:
            chat = state.chats.get(chat_id)
            if chat is None:
                raise ValueError(f"chat {chat_id} is unknown: push a message there first")
            user = state.users.get(user_id) or _user(user_id, "Ana", "pt", None)
            inaccessible = {"chat": chat, "message_id": message_id, "date": 0}
            message = state.find_message(chat_id, message_id) or inaccessible
            query_id = str(4_000_000_000_000 + state.serial())
            state.pending_callbacks.add(query_id)
            query = {
                "id": query_id,
                "from": user,
                "message": copy.deepcopy(message),
                "chat_instance": str(abs(chat_id) * 7919),
                "data": data,
            }
            return state.enqueue({"callback_query": query})

    def push_raw(self, update: dict) -> dict:
        """Queue any update dict as-is except for update_id, which is (re)assigned in order."""
        return self.state.enqueue(update)

    def _reply_copy(self, chat_id: int, target: dict | int) -> dict:
        message_id = target if isinstance(target, int) else target["message_id"]
        stored = self.state.find_message(chat_id, message_id)
        if stored is None and isinstance(target, int):
            raise ValueError(f"no message {message_id} in chat {chat_id}")
        return {k: v for k, v in copy.deepcopy(stored or target).items() if k != "reply_to_message"}

    def _photo_size(self, side: int) -> dict:
        stored = self.state.store_file(make_png(side, side), "photos", ".png", "image/png")
        return {**stored.info(), "width": side, "height": side}

    def _sticker(self) -> dict:
        stored = self.state.store_file(make_png(512, 512), "stickers", ".png", "image/png")
        return {
            **stored.info(), "type": "regular", "width": 512, "height": 512,
            "is_animated": False, "is_video": False, "emoji": "⚽",
        }  # fmt: skip
