"""Issue 18: a /forget that holds, through the real Application and the real CLIs.

The fan's text must be gone from every file under FARENSE_HOME after /forget (database, WAL, logs,
built and grounded datasets), and stay gone after restoring a backup taken before the forget; an
answer in flight when the fan forgets is not stored; /optout and the admin audit survive.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from .helpers import BOT_ADMIN

FAN = 4242
WORD = "zorblaxian"  # in no seed, fact or model: only the fan's question holds it
QUESTION = f"Was the {WORD} ever the mascot of SC Farense?"


def run_cli(package: str, *argv: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", package, *argv], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def files_holding(root: Path, word: str) -> list[Path]:
    """`grep -rl word root`, in Python: every file whose bytes hold the word."""
    return sorted(path for path in root.rglob("*")
                  if path.is_file() and not path.is_symlink() and word.encode() in path.read_bytes())


def rated_up(bot, question: str) -> int:
    """Ask, tap 👍; returns the store's message id."""
    final = bot.ask(FAN, FAN, question, language_code="en")
    up = final.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    since = len(bot.server.calls())
    bot.server.push_callback_query(FAN, FAN, final.response["result"]["message_id"], up)
    assert bot.server.wait_for("answerCallbackQuery", since=since).ok
    bot.settle()
    return int(up.split(":")[1])


def forget(bot) -> str:
    since = len(bot.server.calls())
    bot.server.push_message(FAN, FAN, "/forget", language_code="en")
    reply = bot.server.wait_for(lambda c: c.method == "sendMessage" and "Deleted" in c.params.get("text", ""),
                                60, since).params["text"]
    bot.settle()
    return reply


def test_forget_leaves_no_trace_under_the_home_even_after_restoring_an_older_backup(start_bot, isolated_env):
    home = isolated_env
    bot = start_bot()
    rated_up(bot, QUESTION)
    dataset = Path(run_cli("data", "build").stdout.splitlines()[0].removeprefix("dataset: "))
    grounded = Path(run_cli("training", "ground", str(dataset)).stdout.splitlines()[0])
    backup = Path(run_cli("data", "backup").stdout.splitlines()[0].removeprefix("backup: "))
    assert files_holding(home, WORD)  # the database, the dataset, its grounded copy

    reply = forget(bot)

    assert "questions and answers: 1" in reply and "training datasets: 1" in reply
    assert files_holding(home, WORD) == []
    assert not dataset.exists() and not grounded.exists() and not (home / "datasets" / "latest").exists()
    bot.stop()
    restored = run_cli("data", "restore", str(backup))
    assert "deleted again: 1 feedback, 1 messages" in restored.stdout
    assert files_holding(home, WORD) == []
    db = sqlite3.connect(home / "farense.db")
    assert db.execute("SELECT COUNT(*) FROM messages WHERE user_id = ?", (FAN,)).fetchone() == (0,)
    assert db.execute("SELECT user_id FROM forgotten_users").fetchall() == [(FAN,)]
    db.close()
    assert "feedback 0" in run_cli("data", "build").stdout
    assert files_holding(home, WORD) == []


def test_forget_while_the_answer_is_generated_stores_nothing_and_replies_after_it(start_bot):
    bot = start_bot()
    generating, release = threading.Event(), threading.Event()
    stream = bot.engine.stream

    def slow_stream(*args, **kwargs):
        generating.set()
        release.wait(30)
        yield from stream(*args, **kwargs)

    bot.engine.stream = slow_stream
    since = len(bot.server.calls())
    bot.server.push_message(FAN, FAN, "Quando foi fundado o Farense?")  # answered by the model
    assert generating.wait(60), "the answer never started"
    bot.server.push_message(FAN, FAN, "/forget")
    threading.Timer(1.0, release.set).start()  # the forget is handled while the answer is generated
    forgot = bot.server.wait_for(lambda c: c.method == "sendMessage" and "guardado sobre si" in c.params.get("text", ""),
                                 60, since)
    bot.settle()

    calls = bot.server.calls()[since:]
    answer = [c for c in calls if c.method in ("sendMessage", "editMessageText")
              and c.params.get("chat_id") == FAN and c is not forgot][-1]
    assert calls.index(answer) < calls.index(forgot), "the reply to /forget came before the answer"
    assert "reply_markup" not in answer.params  # nothing stored, nothing to rate
    counts = bot.store.counts()
    assert (counts["messages"], counts["users"], counts["chats"]) == (0, 0, 0)


def test_optout_and_the_refused_admin_attempts_survive_forget(start_bot):
    bot = start_bot()
    for command in ("/optout", "/status"):
        since = len(bot.server.calls())
        bot.server.push_message(FAN, FAN, command, language_code="en")
        assert bot.server.wait_for("sendMessage", since=since).ok
        bot.settle()
    rated_up(bot, "Quando foi fundado o Farense?")

    forget(bot)

    assert bot.store.is_opted_out(FAN)
    db = sqlite3.connect(bot.store.path)
    assert db.execute("SELECT user_id, command, allowed FROM admin_events").fetchall() == [(FAN, "status", 0)]
    db.close()
    rated_up(bot, "Qual é o estádio do Farense?")  # back after the forget, still opted out
    assert bot.store.curated_examples() == [] and bot.store.withheld_opted_out() == 1
    assert BOT_ADMIN != FAN
