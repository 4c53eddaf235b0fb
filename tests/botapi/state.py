"""Lock-protected state of the fake Bot API: call log, update queue, chats, messages, files.

One condition variable guards everything, so HTTP handler threads, long polls and the tests'
wait_for can block on and wake each other without races.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from .model import ApiError, Call, StoredFile, bad_request

# Telegram's default when allowed_updates was never set: everything except these.
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_CONFLICT = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"


def update_type(update: dict) -> str:
    return next(k for k in update if k != "update_id")


class BotState:
    def __init__(self, token: str):
        self.token = token
        self.cond = threading.Condition()
        self.closed = False
        self.call_log: list[Call] = []
        self.faults: dict[str, deque[ApiError]] = defaultdict(deque)
        self.updates: list[dict] = []
        self.allowed_updates: frozenset[str] | None = None
        self.poll_generation = 0
        self.chats: dict[int, dict] = {}
        self.users: dict[int, dict] = {}
        self.messages: dict[tuple[int, int], dict] = {}
        self.pending_callbacks: set[str] = set()
        self.commands: dict[tuple[str, str], list[dict]] = {}
        self.files: dict[str, StoredFile] = {}
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = defaultdict(lambda: itertools.count(1))
        self._serial = itertools.count(1)

    # --- calls and faults --------------------------------------------------------------

    def record(self, call: Call) -> None:
        with self.cond:
            self.call_log.append(call)
            self.cond.notify_all()

    def take_fault(self, method: str) -> None:
        queue = self.faults.get(method.lower())
        if queue:
            raise queue.popleft()

    def wait_for(self, predicate: Callable[[Call], bool], timeout: float, since: int) -> Call:
        def first_match() -> Call | None:
            return next((c for c in self.call_log[since:] if predicate(c)), None)

        with self.cond:
            found = self.cond.wait_for(first_match, timeout)
            if found:
                return found
            recent = "\n".join(f"  {c.summary()}" for c in self.call_log[-20:]) or "  (none)"
            raise TimeoutError(f"no matching Bot API call in {timeout}s; recent calls:\n{recent}")

    # --- updates -----------------------------------------------------------------------

    def enqueue(self, update: dict) -> dict:
        """Queue an update under the next update_id (any given id is replaced, keeping order)."""
        with self.cond:
            body = {k: copy.deepcopy(v) for k, v in update.items() if k != "update_id"}
            update = {"update_id": next(self._update_ids), **body}
            self.updates.append(update)
            self.cond.notify_all()
            return copy.deepcopy(update)

    def _allowed(self, update: dict) -> bool:
        kind = update_type(update)
        if self.allowed_updates is None:
            return kind not in _OPT_IN_UPDATES
        return kind in self.allowed_updates

    def get_updates(self, offset: int, limit: int, timeout: float, allowed: list | None) -> list:
        """Long poll: confirm ids below offset, then block until an update or the timeout."""
        with self.cond:
            self.poll_generation += 1
            generation = self.poll_generation
            self.cond.notify_all()  # an older poll still waiting loses with 409, as on Telegram
            if allowed is not None:
                self.allowed_updates = frozenset(allowed) or None
            if offset < 0:
                self.updates = self.updates[offset:]
            elif offset:
                self.updates = [u for u in self.updates if u["update_id"] >= offset]

            def ready() -> bool:
                self.updates = [u for u in self.updates if self._allowed(u)]  # others are dropped
                return self.closed or generation != self.poll_generation or bool(self.updates)

            self.cond.wait_for(ready, timeout)
            if generation != self.poll_generation:
                raise ApiError(409, _CONFLICT)
            return copy.deepcopy(self.updates[:limit])

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    # --- chats, messages, files --------------------------------------------------------

    def serial(self) -> int:
        return next(self._serial)

    def chat(self, chat_id: Any) -> dict:
        """Resolve a chat_id parameter (id or @username) to a chat the bot has seen."""
        if isinstance(chat_id, str) and chat_id.startswith("@"):
            found = [c for c in self.chats.values() if f"@{c.get('username')}" == chat_id]
            if found:
                return found[0]
        elif isinstance(chat_id, int) and chat_id in self.chats:
            return self.chats[chat_id]
        raise bad_request("chat not found")

    def next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids[chat_id])

    def save_message(self, message: dict) -> None:
        self.messages[(message["chat"]["id"], message["message_id"])] = message

    def find_message(self, chat_id: int, message_id: Any) -> dict | None:
        return self.messages.get((chat_id, message_id))

    def store_file(
        self, data: bytes, folder: str, suffix: str, mime_type: str, file_name: str | None = None
    ) -> StoredFile:
        n = self.serial()
        stored = StoredFile(
            file_id=f"AgACAgQAAxkBAAI{n:06d}",
            file_unique_id=f"AQAD{n:06d}",
            file_path=f"{folder}/file_{n}{suffix}",
            data=data,
            mime_type=mime_type,
            file_name=file_name,
        )
        self.files[stored.file_id] = stored
        return stored
