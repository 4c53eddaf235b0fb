"""Console mode: chat with the bot in a terminal through the same answer pipeline as Telegram.

Used when no TELEGRAM_BOT_TOKEN is set. The local user (CONSOLE_USER_ID) is an admin; answers are
logged like any other, end with their source line like on Telegram, and /good or /bad after an
answer records feedback on it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

from . import admin_ops
from .conversation import Answer, Asker
from .plot import accuracy_plot, latest_run, loss_plot, registered_versions
from .retraining import ProgressText
from .scheduler import start_nightly
from .services import Services
from .texts import Notice, deleted_summary, text

log = logging.getLogger(__name__)

LANG = "en"  # the console speaks English (Telegram users get their own language)

COMMANDS = """Console commands:
  /good, /bad          rate the last answer
  /correct <text>      store a better answer to the last question (and put it in the knowledge base)
  /facts [words]       the newest facts, or those with all the words
  /fact_remove <id>    take a fact out of the answers
  /reset               forget the conversation so far
  /forget              delete everything stored about the console user
  /status, /retrain, /rollback   admin commands
  /help, /quit         this list; leave (Ctrl-D works too)"""


class Console:
    def __init__(self, services: Services, out: TextIO = sys.stdout):
        self.services = services
        self.out = out
        user = services.settings.console_user_id
        self.asker = Asker(chat_id=user, user_id=user, name="console")
        self.last: Answer | None = None

    def say(self, message: str = "", end: str = "\n") -> None:
        self.out.write(message + end)
        self.out.flush()

    async def run(self, source: TextIO = sys.stdin) -> None:
        self.say(
            f"Farense bot — model {self.services.engine.model_id}, adapter "
            f"{self.services.engine.adapter_version or 'none'}. Ask about SC Farense; /help for commands."
        )
        start_nightly(self.services, self.notify)
        echo = not source.isatty()  # piped input: show it, so the output reads as a transcript
        while True:
            self.say("you> ", end="")
            line = await asyncio.to_thread(source.readline)
            if not line:  # EOF (Ctrl-D)
                self.say()
                return
            line = line.strip()
            if echo:
                self.say(line)
            if line in ("/quit", "/exit"):
                return
            if line.startswith("/"):
                await self.command(*line.partition(" ")[::2])
            elif line:
                await self.ask(line)

    async def notify(self, message: Notice) -> None:
        self.say(f"\n[admin] {message(LANG)}")

    async def ask(self, question: str) -> None:
        settings = self.services.settings
        if len(question) > settings.max_question_chars:
            self.say(text("too_long", LANG, length=len(question), limit=settings.max_question_chars))
            return
        printed = ""

        async def show(partial: str) -> None:
            nonlocal printed
            self.say(partial[len(printed) :], end="")
            printed = partial

        self.say("bot> ", end="")
        try:
            answer = await self.services.conversations.ask(self.asker, question, show)
        except Exception:
            log.exception("answering failed")
            self.say(text("failed", LANG))
            return
        if answer.declined:
            self.say(answer.text)
        else:
            sent = answer.text  # what a Telegram user gets: the guard or ANSWER_FROM=fact may replace the stream
            if not sent:
                self.say(text("empty_answer", LANG))
            elif sent.startswith(printed.strip()):  # the answer is sent stripped
                rest = sent[len(printed.strip()) :]
                self.say(rest.lstrip() if printed[-1:].isspace() else rest)
            else:
                self.say(f"\n{sent}")
            if answer.citation:
                self.say(answer.citation)
        self.last = answer if answer.message_id is not None else None

    async def command(self, name: str, argument: str) -> None:
        handler = getattr(self, f"do_{name[1:]}", None)
        if handler is None:
            self.say(COMMANDS)
        else:
            await handler(argument.strip())

    async def do_help(self, _: str) -> None:
        self.say(text("help", LANG, backup_days=self.services.data_settings.backup_max_age_days) + "\n\n" + COMMANDS)

    async def do_reset(self, _: str) -> None:
        self.services.conversations.reset(self.asker.chat_id)
        self.say(text("reset", LANG))

    async def do_forget(self, _: str) -> None:
        counts = await self.services.conversations.forget_user(self.asker.user_id, self.services.data_settings.home)
        self.last = None
        summary = deleted_summary(counts, LANG)
        self.say(text("forgot", LANG, details=summary) if summary else text("forgot_nothing", LANG))

    async def do_good(self, _: str) -> None:
        await self._vote(1)

    async def do_bad(self, _: str) -> None:
        await self._vote(-1)

    async def _vote(self, value: int) -> None:
        if self.last is None:
            self.say("Nothing to rate yet — ask a question first.")
            return
        await asyncio.to_thread(self.services.store.set_feedback, self.last.message_id, self.asker.user_id, value)
        self.say(text("vote_thanks", LANG))

    async def do_correct(self, fix: str) -> None:
        if self.last is None or not fix:
            self.say("Usage: /correct <the right answer>, after an answer.")
            return
        self.say(
            await asyncio.to_thread(
                admin_ops.correct, self.services, self.last.message_id, self.asker.user_id, fix, LANG
            )
        )

    async def do_facts(self, query: str) -> None:
        self.say(await asyncio.to_thread(admin_ops.facts_text, self.services, query, self.asker.user_id, LANG))

    async def do_fact_remove(self, argument: str) -> None:
        self.say(await asyncio.to_thread(admin_ops.remove_fact_text, self.services, argument, self.asker.user_id, LANG))

    async def do_status(self, _: str) -> None:
        self.say(await asyncio.to_thread(admin_ops.status_text, self.services, LANG))
        run = latest_run(self.services.home)
        png = await asyncio.to_thread(loss_plot, run) if run is not None else None
        if png is not None:
            path = self.services.home.loss_plot
            path.write_bytes(png)
            self.say(f"Loss plot of run {run.name}: {path}")
        png = await asyncio.to_thread(lambda: accuracy_plot(registered_versions(self.services.home)))
        if png is not None:
            path = self.services.home.accuracy_plot
            path.write_bytes(png)
            self.say(f"Gate answers per adapter version: {path}")

    async def do_retrain(self, _: str) -> None:
        if self.services.retrainer.running:
            self.say(text("busy", LANG))
            return
        progress = ProgressText(LANG)
        shown = {"at": 0.0, "stage": None}

        def on_progress(event: dict) -> None:  # on the training thread
            progress.update(event)
            if progress.stage != shown["stage"] or time.monotonic() - shown["at"] >= 2:
                shown.update(at=time.monotonic(), stage=progress.stage)
                self.say("  " + " | ".join(progress.render().splitlines()[1:]))

        self.say(progress.title)
        result = await self.services.retrainer.run(
            trigger="console", requested_by=str(self.asker.user_id), on_progress=on_progress
        )
        self.say(result.report("retrain_result", LANG))

    async def do_rollback(self, version: str) -> None:
        self.say(await asyncio.to_thread(admin_ops.rollback, self.services, self.asker.user_id, version, LANG))


async def run_console(services: Services, source: TextIO = sys.stdin) -> None:
    try:
        await Console(services).run(source)
    finally:
        await asyncio.to_thread(services.close)
