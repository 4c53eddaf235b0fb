"""The SQLite conversation store shared by the bot (many threads) and training (another process).

WAL lets readers and one writer work at once; `synchronous=FULL` makes every committed message
survive a crash or power cut; writes take the lock up front (`BEGIN IMMEDIATE`) and are retried
while another writer holds it, so concurrent writers queue instead of failing. Each thread gets its
own connection, because a sqlite3 connection must not be used by two threads at once.

Opening a store takes three steps: the migrations bring the schema up to date, the tombstones of
forgotten users are applied (their rows are deleted again, should an upgrade or a restore have
brought any back), then the seed facts of the knowledge base are imported (idempotent;
data/knowledge.py), so any entry point that opens the store has the facts. Every connection sets
`secure_delete`, so deleted rows are overwritten in the file rather than left in free pages.
`Store(path, readonly=True)` does neither and never writes: it refuses a missing database or one
whose schema is not this code's.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from .jsonl import Problem, report
from .knowledge import seed_knowledge
from .migrations import MIGRATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000
WRITE_ATTEMPTS = 8
MAX_CORRECTION_CHARS = 4000


class StoreError(RuntimeError):
    """The database cannot be used: unreadable, not a database, or from a newer version."""


class UndecodableText(bytes):
    """A TEXT value that is not valid UTF-8; readers report it instead of crashing on it."""


@dataclass(frozen=True)
class LoggedMessage:
    id: int
    chat_id: int
    user_id: int
    question: str
    answer: str
    created_at: str
    model_id: str | None
    adapter_version: str | None
    latency_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    telegram_message_id: int | None
    lang: str | None


@dataclass(frozen=True)
class CuratedExample:
    """A training candidate that a person vouched for: the asker's thumbs-up or an admin fix."""

    question: str
    answer: str
    source: str  # "feedback" or "correction"
    message_id: int
    created_at: str
    lang: str | None
    user_id: int | None = None  # the asker: the builder caps each user's thumbs-up examples


_MESSAGE_COLUMNS = ", ".join(field.name for field in fields(LoggedMessage))
_FIELD_TYPES = {
    "question": str,
    "answer": str,
    "created_at": str,
    "id": int,
    "chat_id": int,
    "user_id": int,
    "model_id": (str, type(None)),
    "adapter_version": (str, type(None)),
    "latency_s": (float, int, type(None)),
    "prompt_tokens": (int, type(None)),
    "completion_tokens": (int, type(None)),
    "telegram_message_id": (int, type(None)),
    "lang": (str, type(None)),
    "source": str,
    "message_id": int,
}

# Every vouched-for message once: its latest correction if any, else the asker's own thumbs-up.
_CANDIDATES = """
SELECT m.id AS message_id, m.question AS question, c.text AS answer, 'correction' AS source,
       c.created_at AS created_at, COALESCE(m.lang, u.language) AS lang, m.user_id AS user_id
FROM corrections c
JOIN messages m ON m.id = c.message_id
LEFT JOIN users u ON u.id = m.user_id
WHERE c.id = (SELECT MAX(id) FROM corrections WHERE message_id = m.id)
  AND EXISTS (SELECT 1 FROM opt_outs o WHERE o.user_id = m.user_id) = :opted_out
  AND NOT EXISTS (SELECT 1 FROM forgotten_users t WHERE t.user_id = m.user_id AND m.created_at <= t.forgotten_at)
UNION ALL
SELECT m.id, m.question, m.answer, 'feedback', f.created_at, COALESCE(m.lang, u.language), m.user_id
FROM messages m
JOIN feedback f ON f.message_id = m.id AND f.user_id = m.user_id AND f.value = 1
LEFT JOIN users u ON u.id = m.user_id
WHERE NOT EXISTS (SELECT 1 FROM corrections WHERE message_id = m.id)
  AND EXISTS (SELECT 1 FROM opt_outs o WHERE o.user_id = m.user_id) = :opted_out
  AND NOT EXISTS (SELECT 1 FROM forgotten_users t WHERE t.user_id = m.user_id AND m.created_at <= t.forgotten_at)
"""

# What forgetting deletes, per kind, for the users and times in `{forgotten}`: a (user_id,
# forgotten_at) table, either one user now (/forget) or every tombstone (at open, after a
# restore). Only rows from before the forget go: a user who comes back afterwards starts afresh.
# The admin audit (admin_events: user id, command name, time, no text) is kept.
_FORGET = {
    "feedback": "DELETE FROM feedback WHERE rowid IN (SELECT f.rowid FROM {forgotten} t JOIN feedback f"
    " ON f.user_id = t.user_id AND f.created_at <= t.forgotten_at)"
    " OR message_id IN ({messages})",
    "corrections": "DELETE FROM corrections WHERE id IN (SELECT c.id FROM {forgotten} t JOIN corrections c"
    " ON c.admin_id = t.user_id AND c.created_at <= t.forgotten_at)"
    " OR message_id IN ({messages})",
    "messages": "DELETE FROM messages WHERE id IN ({messages})",
    "chats": "DELETE FROM chats WHERE type = 'private' AND id IN (SELECT user_id FROM {forgotten})"
    " AND NOT EXISTS (SELECT 1 FROM messages WHERE chat_id = chats.id)",
    "users": "DELETE FROM users WHERE id IN (SELECT u.id FROM {forgotten} t JOIN users u"
    " ON u.id = t.user_id AND u.created_at <= t.forgotten_at)",
}
_FORGOTTEN_MESSAGES = (
    "SELECT m.id FROM {forgotten} t JOIN messages m ON m.user_id = t.user_id AND m.created_at <= t.forgotten_at"
)


def _forget_statements(forgotten: str) -> dict[str, str]:
    messages = _FORGOTTEN_MESSAGES.format(forgotten=forgotten)
    return {kind: sql.format(forgotten=forgotten, messages=messages) for kind, sql in _FORGET.items()}


_FORGET_ONE = _forget_statements("(SELECT :user AS user_id, :until AS forgotten_at)")
_FORGET_TOMBSTONED = _forget_statements("forgotten_users")


def now() -> str:
    """The store's timestamp (UTC, milliseconds; ISO text sorts by time)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _decode_text(raw: bytes) -> str | UndecodableText:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return UndecodableText(raw)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


class Store:
    """Thread-safe access to the conversation database; open once, share, `close()` at the end."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            if readonly:
                self._check_schema()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.write(self._migrate)
                self.write(self._apply_tombstones)
                self.seed_knowledge()  # a fresh machine knows the seed facts from its first start
        except (OSError, sqlite3.DatabaseError) as error:
            self.close()
            raise StoreError(f"cannot open database {self.path}: {error}") from None
        except StoreError:
            self.close()
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def seed_knowledge(self) -> int:
        """Import the knowledge base's seed facts (after the migrations: they need its tables);
        returns how many rows were added or updated."""
        return seed_knowledge(self)

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    # -- users, chats, messages -------------------------------------------------------------

    def upsert_user(self, user_id: int, name: str | None, language: str | None, *, asked_at: str | None = None) -> None:
        """Record a user's name and language; not for a question `asked_at` before the user's /forget."""
        stamp = now()

        def work(db: sqlite3.Connection) -> None:
            if not _forgotten_since(db, user_id, asked_at):
                db.execute(
                    "INSERT INTO users (id, name, language, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET name = excluded.name, language = excluded.language,"
                    " updated_at = excluded.updated_at",
                    (user_id, name, language, stamp, stamp),
                )

        self.write(work)

    def user_language(self, user_id: int) -> str | None:
        """The Telegram language code last seen for a user, or None (never recorded, or /forgotten)."""
        rows = self.read("SELECT language FROM users WHERE id = ?", (user_id,))
        return rows[0][0] if rows else None

    def upsert_chat(
        self, chat_id: int, kind: str, title: str | None, *, user_id: int | None = None, asked_at: str | None = None
    ) -> None:
        """Record a chat's kind and title; not for a question of `user_id` `asked_at` before their /forget."""
        stamp = now()

        def work(db: sqlite3.Connection) -> None:
            if user_id is None or not _forgotten_since(db, user_id, asked_at):
                db.execute(
                    "INSERT INTO chats (id, type, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET type = excluded.type, title = excluded.title,"
                    " updated_at = excluded.updated_at",
                    (chat_id, kind, title, stamp, stamp),
                )

        self.write(work)

    def log_message(
        self,
        chat_id: int,
        user_id: int,
        question: str,
        answer: str,
        *,
        model_id: str | None,
        adapter_version: str | None,
        latency_s: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        lang: str | None = None,
        asked_at: str | None = None,
    ) -> int | None:
        """Store one question and the bot's answer; returns the message id used by feedback.

        None, storing nothing, when the user /forgot after `asked_at` (the answer was in flight):
        checked in the same transaction as the insert, so no forget can slip in between.
        """
        stamp = now()

        def work(db: sqlite3.Connection) -> int | None:
            if _forgotten_since(db, user_id, asked_at):
                return None
            # A message must never be lost because its chat or user was not registered first.
            db.execute(
                "INSERT OR IGNORE INTO chats (id, type, created_at, updated_at) VALUES (?, 'unknown', ?, ?)",
                (chat_id, stamp, stamp),
            )
            db.execute(
                "INSERT OR IGNORE INTO users (id, created_at, updated_at) VALUES (?, ?, ?)", (user_id, stamp, stamp)
            )
            cursor = db.execute(
                "INSERT INTO messages (chat_id, user_id, question, answer, lang, created_at,"
                " model_id, adapter_version, latency_s, prompt_tokens, completion_tokens)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    chat_id,
                    user_id,
                    question,
                    answer,
                    lang,
                    stamp,
                    model_id,
                    adapter_version,
                    latency_s,
                    prompt_tokens,
                    completion_tokens,
                ),
            )
            return int(cursor.lastrowid)

        return self.write(work)

    def attach_telegram_id(self, message_id: int, telegram_message_id: int) -> bool:
        """Link a logged message to the Telegram message that carried the answer."""
        cursor = self.write(
            lambda db: db.execute(
                "UPDATE messages SET telegram_message_id = ? WHERE id = ?", (telegram_message_id, message_id)
            )
        )
        return cursor.rowcount == 1

    def message(self, message_id: int) -> LoggedMessage | None:
        rows = self.read(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        return self._first_message(rows)

    def message_by_telegram_id(self, chat_id: int, telegram_message_id: int) -> LoggedMessage | None:
        rows = self.read(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?"
            " AND telegram_message_id = ? ORDER BY id DESC LIMIT 1",
            (chat_id, telegram_message_id),
        )
        return self._first_message(rows)

    # -- feedback, corrections, privacy -----------------------------------------------------

    def set_feedback(self, message_id: int, user_id: int, value: int) -> bool:
        """Record the asker's vote (re-voting replaces it); anyone else's vote is refused.

        Callback data comes from the client and can be forged, so ownership is checked here.
        """
        if isinstance(value, bool) or value not in (1, -1):
            raise ValueError(f"feedback value must be +1 or -1, got {value!r}")

        def work(db: sqlite3.Connection) -> bool:
            owner = db.execute("SELECT user_id FROM messages WHERE id = ?", (message_id,)).fetchone()
            if owner is None or owner[0] != user_id:
                return False
            db.execute(
                "INSERT INTO feedback (message_id, user_id, value, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(message_id, user_id) DO UPDATE"
                " SET value = excluded.value, created_at = excluded.created_at",
                (message_id, user_id, value, now()),
            )
            return True

        return self.write(work)

    def add_correction(self, message_id: int, admin_id: int, text: str) -> int:
        """Store an admin's better answer; the latest correction of a message is the one trained on."""
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            raise ValueError("a correction needs some text")
        if len(text) > MAX_CORRECTION_CHARS:
            raise ValueError(f"a correction is limited to {MAX_CORRECTION_CHARS} characters, got {len(text)}")

        def work(db: sqlite3.Connection) -> int:
            if db.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is None:
                raise ValueError(f"message {message_id} does not exist")
            cursor = db.execute(
                "INSERT INTO corrections (message_id, admin_id, text, created_at) VALUES (?, ?, ?, ?)",
                (message_id, admin_id, text, now()),
            )
            return int(cursor.lastrowid)

        return self.write(work)

    def forget_user(self, user_id: int) -> dict[str, int]:
        """Delete everything about a user and leave a tombstone (the id and when), in one
        transaction; returns rows deleted per kind. The opt-out and the admin audit stay."""
        until = now()

        def work(db: sqlite3.Connection) -> dict[str, int]:
            db.execute(
                "INSERT INTO forgotten_users (user_id, forgotten_at) VALUES (?, ?) ON CONFLICT(user_id)"
                " DO UPDATE SET forgotten_at = excluded.forgotten_at",
                (user_id, until),
            )
            return {
                kind: db.execute(sql, {"user": user_id, "until": until}).rowcount for kind, sql in _FORGET_ONE.items()
            }

        return self.write(work)

    def add_tombstones(self, tombstones: list[tuple[int, str]]) -> dict[str, int]:
        """Record forgets made elsewhere (the database a restore replaced; the later time wins) and
        delete what they cover; returns rows deleted per kind."""

        def work(db: sqlite3.Connection) -> dict[str, int]:
            db.executemany(
                "INSERT INTO forgotten_users (user_id, forgotten_at) VALUES (?, ?)"
                " ON CONFLICT(user_id) DO UPDATE SET forgotten_at = MAX(forgotten_at,"
                " excluded.forgotten_at)",
                tombstones,
            )
            return self._apply_tombstones(db)

        return self.write(work)

    def checkpoint(self) -> bool:
        """Fold the WAL into the database and truncate it, so deleted rows do not linger in old WAL
        frames; False if readers kept it from finishing (the next checkpoint does it)."""
        busy = self._retrying(lambda: self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())[0]
        if busy:
            log.warning("WAL checkpoint of %s blocked by a reader; the next one truncates it", self.path)
        return not busy

    def set_opt_out(self, user_id: int, opted_out: bool) -> None:
        """Keep (or stop keeping) a user's conversations out of training; remembered per user,
        through /forget too."""
        stamp = now()
        self.write(
            lambda db: (
                db.execute("INSERT OR IGNORE INTO opt_outs (user_id, created_at) VALUES (?, ?)", (user_id, stamp))
                if opted_out
                else db.execute("DELETE FROM opt_outs WHERE user_id = ?", (user_id,))
            )
        )

    def is_opted_out(self, user_id: int) -> bool:
        return bool(self.read("SELECT 1 FROM opt_outs WHERE user_id = ?", (user_id,)))

    # -- jobs, audit, reporting -------------------------------------------------------------

    def claim_job(self, name: str, period_key: str) -> bool:
        """True for exactly one caller per (job, period), across threads and processes."""
        cursor = self.write(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO job_runs (name, period_key, started_at) VALUES (?, ?, ?)",
                (name, period_key, now()),
            )
        )
        return cursor.rowcount == 1

    def release_job(self, name: str, period_key: str) -> None:
        """Give a claimed period back (its run could not start), so a retry can claim it."""
        self.write(lambda db: db.execute("DELETE FROM job_runs WHERE name = ? AND period_key = ?", (name, period_key)))

    def last_job_period(self, name: str) -> str | None:
        """The latest period claimed for job `name` (ISO dates sort as text), or None."""
        return self.read("SELECT max(period_key) FROM job_runs WHERE name = ?", (name,))[0][0]

    def log_admin_event(self, user_id: int, command: str, allowed: bool) -> None:
        self.write(
            lambda db: db.execute(
                "INSERT INTO admin_events (user_id, command, allowed, created_at) VALUES (?, ?, ?, ?)",
                (user_id, command, int(allowed), now()),
            )
        )

    def counts(self) -> dict[str, int]:
        row = self.read("""SELECT
            (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM chats),
            (SELECT COUNT(*) FROM messages),
            (SELECT COUNT(*) FROM feedback WHERE value = 1),
            (SELECT COUNT(*) FROM feedback WHERE value = -1),
            (SELECT COUNT(*) FROM corrections),
            (SELECT COUNT(*) FROM opt_outs)""")[0]
        names = ("users", "chats", "messages", "feedback_up", "feedback_down", "corrections", "opted_out")
        return dict(zip(names, row))

    def thumbs_down_since(self, since: datetime) -> tuple[int, LoggedMessage | None]:
        """Answers rated 👎 since `since`, and the latest of them: what fans dislike, for /status."""
        after = since.astimezone(timezone.utc).isoformat(timespec="milliseconds")
        count = self.read(
            "SELECT COUNT(DISTINCT message_id) FROM feedback WHERE value = -1 AND created_at >= ?", (after,)
        )[0][0]
        rows = self.read(
            f"SELECT {', '.join('m.' + name for name in _MESSAGE_COLUMNS.split(', '))}"
            " FROM feedback f JOIN messages m ON m.id = f.message_id"
            " WHERE f.value = -1 AND f.created_at >= ?"
            " ORDER BY f.created_at DESC, f.rowid DESC LIMIT 1",
            (after,),
        )
        return count, self._first_message(rows)

    def curated_examples(self, problems: list[Problem] | None = None) -> list[CuratedExample]:
        """Vouched-for pairs for training, never from opted-out users; bad rows go to `problems`."""
        rows = self.read(
            f"SELECT message_id, question, answer, source, created_at, lang, user_id"
            f" FROM ({_CANDIDATES}) ORDER BY message_id",
            {"opted_out": 0},
        )
        examples = []
        for row in rows:
            values = self._checked(
                row, ("message_id", "question", "answer", "source", "created_at", "lang", "user_id"), problems
            )
            if values is not None:
                values["lang"] = _primary_language(values["lang"])
                examples.append(CuratedExample(**values))
        return examples

    def withheld_opted_out(self) -> int:
        """How many vouched-for pairs are kept out of training because their asker opted out."""
        return self.read(f"SELECT COUNT(*) FROM ({_CANDIDATES})", {"opted_out": 1})[0][0]

    # -- internals -------------------------------------------------------------------------

    def _first_message(self, rows: list[sqlite3.Row]) -> LoggedMessage | None:
        if not rows:
            return None
        # The model may have said nothing: an empty answer is still a logged message (to correct).
        values = self._checked(
            rows[0], tuple(field.name for field in fields(LoggedMessage)), None, blank_ok=("answer",)
        )
        return LoggedMessage(**values) if values is not None else None

    def _checked(
        self, row: tuple, names: tuple[str, ...], problems: list[Problem] | None, blank_ok: tuple[str, ...] = ()
    ) -> dict[str, object] | None:
        """The row as a dict if every column has its expected type, else report it and give None."""
        values = dict(zip(names, row))
        for name, value in values.items():
            expected = _FIELD_TYPES[name]
            bad_text = isinstance(value, str) and expected is str and not value.strip() and name not in blank_ok
            if bad_text or not isinstance(value, expected):
                what = "undecodable text" if isinstance(value, UndecodableText) else repr(value)[:40]
                report(
                    problems if problems is not None else [],
                    f"{self.path}#messages",
                    int(values.get("message_id", values.get("id", 0)) or 0),
                    f"corrupt row: {name} is {what}",
                )
                return None
        return values

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than the"
                f" {len(MIGRATIONS)} this code knows; upgrade the code or point"
                f" DATABASE_PATH elsewhere"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")

    def _apply_tombstones(self, db: sqlite3.Connection) -> dict[str, int]:
        """Delete the rows every tombstone covers (normally none: they were deleted at the forget)."""
        deleted = {kind: db.execute(sql).rowcount for kind, sql in _FORGET_TOMBSTONED.items()}
        if any(deleted.values()):
            log.info("tombstones of forgotten users applied: %s", deleted)
        return deleted

    def _check_schema(self) -> None:
        """A read-only store needs the schema this code knows: it cannot migrate."""
        if not self.path.is_file():
            raise StoreError(f"no database at {self.path}")
        version = self.read("PRAGMA user_version")[0][0]
        if version != len(MIGRATIONS):
            raise StoreError(
                f"database {self.path} has schema version {version}, this code knows"
                f" {len(MIGRATIONS)}; open it read-write once (e.g. start the bot) to migrate"
                if version < len(MIGRATIONS)
                else f"database {self.path} has schema version {version}, newer than the"
                f" {len(MIGRATIONS)} this code knows; upgrade the code"
            )

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self.path} is closed")
            target = f"{self.path.resolve().as_uri()}?mode=ro" if self.readonly else str(self.path)
            connection = sqlite3.connect(
                target, timeout=BUSY_TIMEOUT_MS / 1000, uri=self.readonly, isolation_level=None, check_same_thread=False
            )
            self._connections.append(connection)
        connection.text_factory = _decode_text
        self._local.connection = connection
        if not self.readonly:  # setting it writes the database header; a read-only store follows it
            self._retrying(lambda: connection.execute("PRAGMA journal_mode = WAL"))
        for pragma in (
            "synchronous = FULL",
            "foreign_keys = ON",
            f"busy_timeout = {BUSY_TIMEOUT_MS}",
            "secure_delete = ON",
        ):
            connection.execute(f"PRAGMA {pragma}")
        return connection

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` in one write transaction, taking the lock first so it cannot
        deadlock; retried while another writer holds the database. Returns what `work` returns."""
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")

        def attempt() -> T:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                result = work(db)
                db.execute("COMMIT")
                return result
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        return self._retrying(attempt)

    def read(self, sql: str, params: tuple | dict = ()) -> list:
        """The rows of one query (retried while the database is busy)."""
        return self._retrying(lambda: self._connection().execute(sql, params).fetchall())

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Retry while another connection holds the lock beyond busy_timeout."""
        attempt = 0
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as error:
                attempt += 1
                if not _is_busy(error) or attempt >= WRITE_ATTEMPTS:
                    raise
                log.debug("database busy, retrying (%s)", error)
                time.sleep(0.05 * 2**attempt)


def _forgotten_since(db: sqlite3.Connection, user_id: int, asked_at: str | None) -> bool:
    """Whether the user /forgot at or after `asked_at` (None: not asked for a question)."""
    return (
        asked_at is not None
        and db.execute(
            "SELECT 1 FROM forgotten_users WHERE user_id = ? AND forgotten_at >= ?", (user_id, asked_at)
        ).fetchone()
        is not None
    )


def _primary_language(tag: str | None) -> str | None:
    """ "pt-BR" -> "pt": the builder and scorer only care about the language, not the region."""
    if not tag:
        return None
    return tag.replace("_", "-").split("-")[0].lower() or None
