"""The bot's logs: one JSON line per event in $FARENSE_HOME/logs/bot.log, rotated at a size cap.

    {"time": "2025-05-01T03:00:00.123+01:00", "level": "INFO", "component": "bot.retraining",
     "chat": null, "run": "nightly-20250501-030000", "msg": "retraining (nightly, ...)"}

`chat` comes from the Telegram update being handled (a TypeHandler sets it for the update's task),
`run` from the retraining around the line (`log_context`); both reach worker threads through
asyncio.to_thread, which copies context variables. A traceback stays inside its event's line.

Every handler passes each record through `Redact` first: the bot token (also URL-quoted) becomes
<token> — PTB and httpx messages can quote request URLs, which contain it — and personal data in
message arguments and tracebacks (e-mails, phones, cards, IBANs, handles: data.privacy.scrub)
becomes a placeholder. Integer arguments (chat and user ids) are left as they are.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from common.home import Home
from data.privacy import scrub

from .settings import BotSettings

LOG_FILE = "bot.log"
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s%(where)s: %(message)s"

_chat: ContextVar[int | None] = ContextVar("log_chat", default=None)
_run: ContextVar[str | None] = ContextVar("log_run", default=None)


@contextmanager
def log_context(*, chat: int | None = None, run: str | None = None) -> Iterator[None]:
    """Tag every line logged inside (this task or thread, and threads it starts via to_thread)."""
    tokens = [(_chat, _chat.set(chat))] if chat is not None else []
    tokens += [(_run, _run.set(run))] if run is not None else []
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


async def bind_update(update: object, context: object) -> None:
    """A group -1 TypeHandler: the chat of the update this task is handling tags its log lines."""
    chat = getattr(update, "effective_chat", None)
    _chat.set(chat.id if chat is not None else None)


def add_update_context(application) -> None:
    """Register `bind_update` ahead of every other handler of a PTB Application (group -2: in
    group -1 the rate limit of bot/app.py has the one handler PTB runs per group)."""
    from telegram import Update
    from telegram.ext import TypeHandler

    application.add_handler(TypeHandler(Update, bind_update), group=-2)


class Redact(logging.Filter):
    """Token and personal data out, chat/run ids in; attach to every handler (loggers' own filters
    do not see records propagated from child loggers)."""

    def __init__(self, token: str = ""):
        from .handlers.errors import redact  # here: bot.handlers imports the modules that import this one

        super().__init__()
        self.secrets = [secret for secret in dict.fromkeys((token, quote(token, safe=""))) if secret]
        self._redact = redact

    def clean(self, text: str) -> str:
        for secret in self.secrets:  # before scrubbing, which could cut the token's digits apart
            text = self._redact(text, secret)
        return scrub(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "chat"):
            record.chat = _chat.get()
        if not hasattr(record, "run"):
            record.run = _run.get()
        if record.args:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                record.msg, record.args = self.clean(message), None
            elif isinstance(record.args, dict):
                record.args = {key: self._argument(value) for key, value in record.args.items()}
            else:
                record.args = tuple(self._argument(value) for value in record.args)
        else:
            record.msg = self.clean(str(record.msg))
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)
        return True

    def _argument(self, value: object) -> object:
        if isinstance(value, (int, float)) or value is None:
            return value
        return self.clean(str(value))


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, component, chat, run, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .astimezone()
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": record.name,
            "chat": getattr(record, "chat", None),
            "run": getattr(record, "run", None),
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            event["exc"] = record.exc_text
        return json.dumps(event, ensure_ascii=False, default=str)


class HumanLines(logging.Formatter):
    """For a terminal: the usual line, with the chat/run it belongs to."""

    def __init__(self):
        super().__init__(HUMAN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        tags = [
            f"chat {record.chat}" if getattr(record, "chat", None) is not None else "",
            f"run {record.run}" if getattr(record, "run", None) else "",
        ]
        record.where = " [" + ", ".join(tag for tag in tags if tag) + "]" if any(tags) else ""
        return super().format(record)


def setup_logging(home: Home, settings: BotSettings, *, console: bool) -> Path | None:
    """File log (JSON lines, rotated) plus stderr; returns the log file, None if it cannot be written.

    stderr: LOG_STDERR_LEVEL, WARNING in console mode (the chat is on the terminal). The service
    sets WARNING: there stderr is logs/service.log, not rotated, kept for warnings and crashes."""
    token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else ""
    redacting = Redact(token)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING if console else settings.log_stderr_level)
    stderr.setFormatter(HumanLines())
    stderr.addFilter(redacting)
    root.addHandler(stderr)
    levels = [stderr.level]
    path = home.logs / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.handlers.RotatingFileHandler(
            path, maxBytes=int(settings.log_max_mb * 1024 * 1024), backupCount=settings.log_backups, encoding="utf-8"
        )
    except OSError as error:
        logging.getLogger(__name__).warning("cannot write the log file %s (%s); logging to stderr only", path, error)
        path = None
    else:
        file.setLevel(settings.log_level)
        file.setFormatter(JsonLines())
        file.addFilter(redacting)
        root.addHandler(file)
        levels.append(file.level)
    root.setLevel(min(levels))
    return path
