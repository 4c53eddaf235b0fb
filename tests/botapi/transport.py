"""HTTP layer: routes /bot<token>/<method> and /file/bot<token>/<path>, and decodes
parameters from the query string and JSON, urlencoded or multipart bodies, as the Bot API does.
"""

from __future__ import annotations

import json
import re
from email.message import Message
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .model import ApiError, UploadedFile, bad_request

# Form values are strings; Telegram decodes these fields by their declared types.
JSON_FIELDS = frozenset({
    "reply_markup", "entities", "caption_entities", "reply_parameters", "link_preview_options",
    "commands", "scope", "allowed_updates",
})  # fmt: skip
INT_FIELDS = frozenset({
    "chat_id", "message_id", "offset", "limit", "timeout", "draft_id", "message_thread_id",
    "reply_to_message_id", "cache_time",
})  # fmt: skip
BOOL_FIELDS = frozenset({
    "disable_notification", "protect_content", "drop_pending_updates", "show_alert",
    "has_spoiler", "allow_sending_without_reply", "show_caption_above_media",
    "disable_content_type_detection",
})  # fmt: skip

_API_PATH = re.compile(r"/bot([^/]+)/([A-Za-z0-9_]+)/?")
_FILE_PATH = re.compile(r"/file/bot([^/]+)/(.+)")


def _coerce(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if name in JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(f"can't parse {name} JSON object") from None
    if name in INT_FIELDS and re.fullmatch(r"-?\d+", value):
        return int(value)
    if name in BOOL_FIELDS:
        return value.lower() in ("true", "1")
    return value


def _header(value: str) -> Message:
    msg = Message()
    msg["content-type"] = value
    return msg


def _multipart(body: bytes, boundary: str) -> tuple[dict, dict[str, UploadedFile]]:
    """Split on the boundary by hand so binary parts keep their exact bytes."""
    params: dict[str, Any] = {}
    files: dict[str, UploadedFile] = {}
    for chunk in (b"\r\n" + body).split(b"\r\n--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = BytesHeaderParser().parsebytes(head.lstrip(b"\r\n"))
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
        if filename is None:
            params[name] = data.decode("utf-8")
        else:
            files[name] = UploadedFile(name, filename, headers.get_content_type(), data)
    return params, files


def decode_request(query: str, content_type: str, body: bytes) -> tuple[dict, dict[str, UploadedFile]]:
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    files: dict[str, UploadedFile] = {}
    header = _header(content_type or "application/octet-stream")
    kind = header.get_content_type()
    if body and kind == "application/json":
        try:
            decoded = json.loads(body)
        except ValueError:
            raise bad_request("can't parse JSON request body") from None
        params.update(decoded if isinstance(decoded, dict) else {})
    elif body and kind == "application/x-www-form-urlencoded":
        params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    elif body and kind == "multipart/form-data":
        form, files = _multipart(body, header.get_param("boundary") or "")
        params.update(form)
    return {k: _coerce(k, v) for k, v in params.items()}, files


class Handler(BaseHTTPRequestHandler):
    """Thin adapter: decode the request, let the server's `api` answer, write JSON back."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the call log is the record tests look at."""

    def _handle(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        path = unquote(url.path)  # PTB percent-encodes the ':' of the token in file URLs
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = _API_PATH.fullmatch(path)
        download = _FILE_PATH.fullmatch(path) if self.command == "GET" else None
        if route:
            try:
                content_type = self.headers.get("Content-Type", "")
                params, files = decode_request(url.query, content_type, body)
            except ApiError as err:
                self._reply(err.code, "application/json", json.dumps(err.payload()).encode())
                return
            status, payload = api.handle(route[1], route[2], params, files)
            self._reply(status, "application/json", json.dumps(payload).encode())
        elif download and (stored := api.download(download[1], download[2])):
            self._reply(200, stored.mime_type, stored.data)
        else:
            error = {"ok": False, "error_code": 404, "description": "Not Found"}
            self._reply(404, "application/json", json.dumps(error).encode())

    def _reply(self, status: int, content_type: str, data: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, e.g. a cancelled long poll at bot shutdown


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 resets bursts of concurrent bot requests
    api: Any = None  # the BotApiServer answering requests
