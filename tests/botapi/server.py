"""BotApiServer: a local fake of api.telegram.org for end-to-end tests of a PTB bot.

Runs a real HTTP server on 127.0.0.1 in a background thread so the bot talks to it through
PTB's own HTTP stack; tests inject user updates and inspect/await the bot's calls.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable

from . import bot_methods, messages  # noqa: F401  (importing registers the API methods)
from .model import BOT_SENDER, METHODS, ApiError, Call, StoredFile, UploadedFile
from .state import BotState
from .transport import Handler, HttpServer
from .updates import UpdateInjector

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


class BotApiServer(UpdateInjector):
    def __init__(self, token: str):
        self.token = token
        self.state = BotState(token)
        self._httpd: HttpServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> BotApiServer:
        self._httpd = HttpServer(("127.0.0.1", 0), Handler)
        self._httpd.api = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self.state.close()  # releases blocked long polls
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> BotApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """For ApplicationBuilder().base_url(...): PTB appends the token."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # --- request handling (called from HTTP threads) ----------------------------------

    def handle(self, token: str, method: str, params: dict, files: dict[str, UploadedFile]) -> tuple[int, dict]:
        started = time.time()
        name, handler = METHODS.get(method.lower(), (method, None))
        try:
            if token != self.token:
                raise ApiError(401, "Unauthorized")
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            with self.state.cond:
                self.state.take_fault(name)
                payload = {"ok": True, "result": handler(self.state, params, files)}
        except ApiError as err:
            payload = err.payload()
        except Exception as err:  # a bug here must show up in the test, not hang the bot
            payload = ApiError(500, f"Internal Server Error: {err!r}").payload()
        self.state.record(Call(name, params, files, started, payload))
        return (200 if payload["ok"] else payload["error_code"]), payload

    def download(self, token: str, file_path: str) -> StoredFile | None:
        if token != self.token:
            return None
        with self.state.cond:
            return next((f for f in self.state.files.values() if f.file_path == file_path), None)

    # --- fault injection ---------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error_code: int = 429,
        retry_after: int = 1,
        description: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the next `times` calls of `method` fail; 429s carry retry_after like Telegram's."""
        parameters = {"retry_after": retry_after} if error_code == 429 else None
        if description is None:
            description = (
                f"Too Many Requests: retry after {retry_after}"
                if error_code == 429
                else _DEFAULT_DESCRIPTIONS.get(error_code, "Error")
            )
        with self.state.cond:
            queue = self.state.faults[method.lower()]
            queue.extend(ApiError(error_code, description, parameters) for _ in range(times))

    # --- inspection --------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        with self.state.cond:
            log = self.state.call_log
            return [c for c in log if method is None or c.method.lower() == method.lower()]

    def sent_messages(self, chat_id: int | None = None) -> list[dict]:
        """The bot's messages still present, as they are now (after edits), in sending order."""
        with self.state.cond:
            return [
                copy.deepcopy(m)
                for (c, _), m in self.state.messages.items()
                if m["from"]["id"] == BOT_SENDER["id"] and (chat_id is None or c == chat_id)
            ]

    def wait_for(self, predicate: Callable[[Call], bool] | str, timeout: float = 10.0, since: int = 0) -> Call:
        """First call (from index `since` of the log) matching predicate or method name.

        Raises TimeoutError listing recent calls, so a failing test shows what the bot did.
        """
        if isinstance(predicate, str):
            method = predicate.lower()
            predicate = lambda call: call.method.lower() == method  # noqa: E731
        return self.state.wait_for(predicate, timeout, since)
