"""Message methods (send, edit, delete, media, chat actions, drafts) with Telegram's checks.

The checks mirror real "Bad Request" errors so a bot's error paths can be tested end to end.
"""

from __future__ import annotations

import copy
import mimetypes
import os
import time
from typing import Any

from . import formatting
from .media import PNG_SIGNATURE, image_size
from .model import BOT_SENDER, StoredFile, UploadedFile, api_method, bad_request, require

MAX_TEXT, MAX_CAPTION = 4096, 1024
CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
})  # fmt: skip
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)


def _formatted(p: dict, key: str, *, caption: bool = False, allow_empty: bool = False) -> tuple[str, list]:
    """Text (or caption) after entity parsing, with the length and emptiness rules."""
    raw = p.get(key) or ""
    entities_key = "caption_entities" if caption else "entities"
    if p.get(entities_key) is not None:
        text, entities = raw, p[entities_key]
    else:
        try:
            text, entities = formatting.parse(raw, p.get("parse_mode"))
        except formatting.ParseError as err:
            raise bad_request(f"can't parse entities: {err}") from None
        except ValueError:
            raise bad_request("unsupported parse_mode") from None
    if caption:
        if len(text) > MAX_CAPTION:
            raise bad_request("message caption is too long")
    elif not text.strip() and not allow_empty:
        raise bad_request("message text is empty")
    elif len(text) > MAX_TEXT:
        raise bad_request("message is too long")
    return text, entities


def _inline_markup(p: dict) -> dict | None:
    """Validate reply_markup; only inline keyboards are echoed in Message, as on Telegram."""
    markup = p.get("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return None
    for row in markup["inline_keyboard"]:
        for button in row:
            if not button.get("text"):
                raise bad_request("text buttons are unallowed in the inline keyboard")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(data.encode()) <= 64:
                raise bad_request("BUTTON_DATA_INVALID")
    return markup


def _reply_target(state: Any, chat: dict, p: dict) -> dict | None:
    params = p.get("reply_parameters") or {}
    message_id = params.get("message_id", p.get("reply_to_message_id"))
    if message_id is None:
        return None
    target_chat = state.chat(params["chat_id"]) if "chat_id" in params else chat
    target = state.find_message(target_chat["id"], message_id)
    if target is None:
        if params.get("allow_sending_without_reply", p.get("allow_sending_without_reply")):
            return None
        raise bad_request("message to be replied not found")
    return {k: v for k, v in copy.deepcopy(target).items() if k != "reply_to_message"}


def _send(state: Any, p: dict, **content: Any) -> dict:
    """Validate the common parts, then store and return a new bot message."""
    chat = state.chat(require(p, "chat_id"))
    reply_to, markup = _reply_target(state, chat, p), _inline_markup(p)
    message = {
        "message_id": state.next_message_id(chat["id"]),
        "from": dict(BOT_SENDER),
        "chat": copy.deepcopy(chat),
        "date": int(time.time()),
        **{k: v for k, v in content.items() if v},
    }
    if reply_to:
        message["reply_to_message"] = reply_to
    if markup:
        message["reply_markup"] = markup
    if p.get("message_thread_id"):
        message["message_thread_id"] = p["message_thread_id"]
    state.save_message(message)
    return copy.deepcopy(message)


def _upload(state: Any, p: dict, files: dict[str, UploadedFile], field: str) -> UploadedFile | StoredFile:
    """The new upload for `field` (direct or attach://), or a file reused by file_id."""
    value = p.get(field)
    if isinstance(value, str) and value.startswith("attach://"):
        value = files.get(value[len("attach://") :])
    elif value is None:
        value = files.get(field)
    if value is None:
        raise bad_request(f"there is no {field} in the request")
    if isinstance(value, str):
        if value not in state.files:
            raise bad_request("wrong file identifier/HTTP URL specified")
        return state.files[value]
    if not value.data:
        raise bad_request("file must be non-empty")
    return value


@api_method("sendMessage")
def send_message(state: Any, p: dict, files: dict) -> dict:
    text, entities = _formatted(p, "text")
    return _send(state, p, text=text, entities=entities)


@api_method("sendPhoto")
def send_photo(state: Any, p: dict, files: dict) -> dict:
    caption, entities = _formatted(p, "caption", caption=True)
    source = _upload(state, p, files, "photo")
    size = image_size(source.data)
    if size is None:
        raise bad_request("IMAGE_PROCESS_FAILED")
    if isinstance(source, UploadedFile):
        png = source.data.startswith(PNG_SIGNATURE)
        suffix, mime = (".png", "image/png") if png else (".jpg", "image/jpeg")
        source = state.store_file(source.data, "photos", suffix, mime)
    photo = [{**source.info(), "width": size[0], "height": size[1]}]
    return _send(state, p, photo=photo, caption=caption, caption_entities=entities)


@api_method("sendDocument")
def send_document(state: Any, p: dict, files: dict) -> dict:
    caption, entities = _formatted(p, "caption", caption=True)
    source = _upload(state, p, files, "document")
    if isinstance(source, UploadedFile):
        name = source.filename or "file"
        mime = source.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        source = state.store_file(source.data, "documents", os.path.splitext(name)[1], mime, name)
    document = {**source.info(), "file_name": source.file_name, "mime_type": source.mime_type}
    document = {k: v for k, v in document.items() if v is not None}
    return _send(state, p, document=document, caption=caption, caption_entities=entities)


def _own_message(state: Any, p: dict, missing: str) -> dict | None:
    """The bot message an edit targets; None for inline messages (not tracked)."""
    if p.get("inline_message_id"):
        return None
    chat = state.chat(require(p, "chat_id"))
    if p.get("message_id") is None:
        raise bad_request("message identifier is not specified")
    message = state.find_message(chat["id"], p["message_id"])
    if message is None:
        raise bad_request(missing)
    if message["from"]["id"] != BOT_SENDER["id"]:
        raise bad_request("message can't be edited")
    return message


def _apply(message: dict, **fields: Any) -> dict:
    """Set fields on a stored message (None/empty removes them) and stamp edit_date."""
    for key, value in fields.items():
        if value:
            message[key] = value
        else:
            message.pop(key, None)
    message["edit_date"] = int(time.time())
    return copy.deepcopy(message)


@api_method("editMessageText")
def edit_message_text(state: Any, p: dict, files: dict) -> dict | bool:
    text, entities = _formatted(p, "text")
    markup = _inline_markup(p)
    message = _own_message(state, p, "message to edit not found")
    if message is None:
        return True
    if "text" not in message:
        raise bad_request("there is no text in the message to edit")
    current = (message["text"], message.get("entities", []), message.get("reply_markup"))
    if current == (text, entities, markup):
        raise bad_request(NOT_MODIFIED)
    return _apply(message, text=text, entities=entities, reply_markup=markup)


@api_method("editMessageReplyMarkup")
def edit_message_reply_markup(state: Any, p: dict, files: dict) -> dict | bool:
    markup = _inline_markup(p)
    message = _own_message(state, p, "message to edit not found")
    if message is None:
        return True
    if message.get("reply_markup") == markup:
        raise bad_request(NOT_MODIFIED)
    return _apply(message, reply_markup=markup)


@api_method("deleteMessage")
def delete_message(state: Any, p: dict, files: dict) -> bool:
    chat = state.chat(require(p, "chat_id"))
    if state.messages.pop((chat["id"], require(p, "message_id")), None) is None:
        raise bad_request("message to delete not found")
    return True


@api_method("sendChatAction")
def send_chat_action(state: Any, p: dict, files: dict) -> bool:
    state.chat(require(p, "chat_id"))
    if p.get("action") not in CHAT_ACTIONS:
        raise bad_request("wrong parameter action in request")
    return True


@api_method("sendMessageDraft")
def send_message_draft(state: Any, p: dict, files: dict) -> bool:
    """Streams a partial reply in a private chat; nothing is stored, the call log keeps it."""
    chat = state.chat(require(p, "chat_id"))
    if chat["type"] != "private":
        raise bad_request("TEXTDRAFT_PEER_INVALID")
    if not p.get("draft_id"):
        raise bad_request("draft_id must be non-zero")
    _formatted(p, "text", allow_empty=True)
    return True
