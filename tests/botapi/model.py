"""Value types and the method registry shared by the fake Bot API modules.

Kept apart from the server so method modules can register handlers without import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BOT_USER: dict[str, Any] = {
    "id": 999,
    "is_bot": True,
    "first_name": "Farense Bot",
    "username": "farense_test_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
# The short form Telegram puts in Message.from (getMe-only capabilities left out).
BOT_SENDER: dict[str, Any] = {k: BOT_USER[k] for k in ("id", "is_bot", "first_name", "username")}


class ApiError(Exception):
    """A Bot API failure, rendered as Telegram's {"ok": false, ...} body and HTTP status."""

    def __init__(self, code: int, description: str, parameters: dict | None = None):
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: {detail}")


@dataclass(frozen=True)
class UploadedFile:
    """One multipart file part as the bot sent it, kept so tests can inspect the bytes."""

    field: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass(frozen=True)
class StoredFile:
    """A file the server can hand out via getFile and the file download URL."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    mime_type: str
    file_name: str | None = None

    def info(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": len(self.data),
        }


@dataclass(frozen=True)
class Call:
    """One recorded Bot API request; the log keeps them in the order they completed."""

    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    timestamp: float
    response: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))

    def summary(self) -> str:
        response = self.response
        outcome = "ok" if self.ok else f"{response['error_code']} {response['description']}"
        return f"{self.method}({self.params!r}) -> {outcome}"


# Handlers take (state, params, files) and return the JSON "result"; keyed by lower-case
# name because Bot API method names are case-insensitive.
Handler = Callable[[Any, dict[str, Any], dict[str, UploadedFile]], Any]
METHODS: dict[str, tuple[str, Handler]] = {}


def api_method(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name.lower()] = (name, fn)
        return fn

    return register


def require(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise bad_request(f"{name} is empty")
    return value
