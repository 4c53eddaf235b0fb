"""Bot-level methods: identity, polling, webhook, commands, callback answers, chats, files."""

from __future__ import annotations

import json
import re
from typing import Any

from .model import BOT_USER, api_method, bad_request, require

_COMMAND = re.compile(r"[a-z0-9_]{1,32}")


@api_method("getMe")
def get_me(state: Any, p: dict, files: dict) -> dict:
    return dict(BOT_USER)


@api_method("getUpdates")
def get_updates(state: Any, p: dict, files: dict) -> list:
    limit = min(max(p.get("limit") or 100, 1), 100)
    timeout = max(p.get("timeout") or 0, 0)
    return state.get_updates(p.get("offset") or 0, limit, timeout, p.get("allowed_updates"))


@api_method("deleteWebhook")
def delete_webhook(state: Any, p: dict, files: dict) -> bool:
    if p.get("drop_pending_updates"):
        state.updates.clear()
    return True


@api_method("getWebhookInfo")
def get_webhook_info(state: Any, p: dict, files: dict) -> dict:
    return {"url": "", "has_custom_certificate": False, "pending_update_count": len(state.updates)}


def _commands_key(p: dict) -> tuple[str, str]:
    scope = p.get("scope") or {"type": "default"}
    return json.dumps(scope, sort_keys=True), p.get("language_code") or ""


@api_method("setMyCommands")
def set_my_commands(state: Any, p: dict, files: dict) -> bool:
    commands = p.get("commands")
    if not isinstance(commands, list) or len(commands) > 100:
        raise bad_request("can't parse commands JSON object")
    for command in commands:
        if not _COMMAND.fullmatch(str(command.get("command", ""))):
            raise bad_request("BOT_COMMAND_INVALID")
        if not 1 <= len(command.get("description") or "") <= 256:
            raise bad_request("command description must be non-empty")
    state.commands[_commands_key(p)] = [{"command": c["command"], "description": c["description"]} for c in commands]
    return True


@api_method("getMyCommands")
def get_my_commands(state: Any, p: dict, files: dict) -> list:
    return list(state.commands.get(_commands_key(p), []))


@api_method("deleteMyCommands")
def delete_my_commands(state: Any, p: dict, files: dict) -> bool:
    state.commands.pop(_commands_key(p), None)
    return True


@api_method("answerCallbackQuery")
def answer_callback_query(state: Any, p: dict, files: dict) -> bool:
    query_id = str(require(p, "callback_query_id"))
    if query_id not in state.pending_callbacks:
        raise bad_request("query is too old and response timeout expired or query ID is invalid")
    if len(p.get("text") or "") > 200:
        raise bad_request("MESSAGE_TOO_LONG")
    state.pending_callbacks.discard(query_id)
    return True


@api_method("getChat")
def get_chat(state: Any, p: dict, files: dict) -> dict:
    chat = state.chat(require(p, "chat_id"))
    gifts = (
        "unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription",
        "gifts_from_channels",
    )  # fmt: skip
    return {
        **chat,
        "accent_color_id": 0,
        "max_reaction_count": 11,
        "accepted_gift_types": dict.fromkeys(gifts, True),
    }


@api_method("getFile")
def get_file(state: Any, p: dict, files: dict) -> dict:
    stored = state.files.get(require(p, "file_id"))
    if stored is None:
        raise bad_request("invalid file_id")
    return {**stored.info(), "file_path": stored.file_path}


@api_method("close")
def close(state: Any, p: dict, files: dict) -> bool:
    return True


@api_method("logOut")
def log_out(state: Any, p: dict, files: dict) -> bool:
    return True
