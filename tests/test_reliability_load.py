"""Load on loopback: many users at once through the real Application, the Bot API test server and
the tiny model. Nothing may be lost, nothing may crash, the model's queue stays bounded, every user
is answered in order and about as often as every other, and memory does not grow with traffic.

`make soak` runs 100 users × 10 messages twice; the normal run 20 users × 3. Both print their
figures (`-s`). Throughput is bound by PTB's AIORateLimiter (30 requests/s, Telegram's flood limit),
not by the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import psutil
import pytest

from bot.conversation import PUMP_THREADS

FIRST_USER = 10_000
QUESTIONS = (
    "Quando foi fundado o Farense?",
    "Who is Farense's greatest idol?",
    "Onde joga o Farense?",
    "What are Farense's colours?",
    "Quem treina o Farense?",
)


@pytest.fixture
def load_bot(roomy_server, start_bot):
    """The bot as in production (1 s between streamed drafts), short answers, no rate limit in the way."""
    return lambda: start_bot(
        max_tokens=8, stream_edit_interval=1.0, rate_limit_per_minute=1000, updates_per_minute=1000
    )


class Sampler(threading.Thread):
    """Samples the model's wait queue and PTB's update queue while the load runs."""

    def __init__(self, bot):
        super().__init__(name="load-sampler", daemon=True)
        self.bot, self.stop, self.engine_queue, self.update_queue = bot, threading.Event(), [], []

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.engine_queue.append(self.bot.engine.queue_length())
            self.update_queue.append(self.bot.application.update_queue.qsize())


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run_load(bot, users: int, messages: int, round_offset: int = 0) -> dict:
    """Every user sends `messages` questions at once (round by round); wait until all are handled."""
    server, store = bot.server, bot.store
    user_ids = [FIRST_USER + n for n in range(users)]
    rows_before = store.counts()["messages"]
    since = len(server.calls())
    sampler = Sampler(bot)
    sampler.start()
    started = time.perf_counter()
    for round_ in range(round_offset, round_offset + messages):
        for user in user_ids:
            server.push_message(
                user,
                user,
                f"[{user}#{round_}] {QUESTIONS[(user + round_) % len(QUESTIONS)]}",
                first_name=f"User {user}",
            )
    bot.settle(timeout=3600)
    elapsed = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()

    calls = server.calls()[since:]
    finals = [c for c in calls if c.method == "sendMessage" and "reply_markup" in c.params and c.ok]
    with store._connection() as db:
        rows = db.execute(
            "SELECT id, user_id, question, answer FROM messages WHERE id > ? ORDER BY id", (rows_before,)
        ).fetchall()
    # Fairness: replay the answers in the order they were logged; how far apart do users get?
    answered, spread = Counter({user: 0 for user in user_ids}), 0
    for _, user, _, _ in rows:
        answered[user] += 1
        spread = max(spread, max(answered.values()) - min(answered.values()))
    per_user_rounds = {
        user: [int(q.split("#")[1].split("]")[0]) for _, u, q, _ in rows if u == user] for user in user_ids
    }
    return {
        "users": users,
        "messages": messages,
        "sent": users * messages,
        "seconds": elapsed,
        "per_second": users * messages / elapsed,
        "rows": rows,
        "finals": finals,
        "calls": calls,
        "lost_rows": users * messages - len(rows),
        "max_engine_queue": max(sampler.engine_queue, default=0),
        "max_update_queue": max(sampler.update_queue, default=0),
        "max_spread": spread,
        "per_user_rounds": per_user_rounds,
        "answered": answered,
    }


def check(result: dict, caplog) -> None:
    users, messages = result["users"], result["messages"]
    expected_rounds = sorted(set(r for rounds in result["per_user_rounds"].values() for r in rounds))
    assert result["lost_rows"] == 0 and len(result["rows"]) == users * messages
    questions = Counter(question for _, _, question, _ in result["rows"])
    assert len(questions) == users * messages and set(questions.values()) == {1}  # each exactly once
    assert all(rounds == expected_rounds for rounds in result["per_user_rounds"].values())  # in order
    finals = Counter(c.params["chat_id"] for c in result["finals"])
    assert len(finals) == users and set(finals.values()) == {messages}  # everyone answered, every time
    for user, rounds in result["per_user_rounds"].items():  # ...and sees the answers in the order asked
        rows = {
            row_id: round_ for (row_id, u, _, _), round_ in zip((r for r in result["rows"] if r[1] == user), rounds)
        }
        delivered = [
            rows[int(c.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])]
            for c in result["finals"]
            if c.params["chat_id"] == user
        ]
        assert delivered == rounds, (user, delivered)
    assert [c.summary() for c in result["calls"] if not c.ok] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert result["max_engine_queue"] <= PUMP_THREADS  # bounded by the answer threads, not by the load
    assert result["max_spread"] <= 3, result["max_spread"]


def report(label: str, result: dict, rss: list[float]) -> str:
    line = (
        f"{label}: {result['users']} users × {result['messages']} messages = {result['sent']} in "
        f"{result['seconds']:.1f} s ({result['per_second']:.1f} msg/s); lost rows {result['lost_rows']}; "
        f"max model queue {result['max_engine_queue']} (bound {PUMP_THREADS}); max update queue "
        f"{result['max_update_queue']}; max spread of answered counts {result['max_spread']}; "
        f"RSS {' → '.join(f'{r:.0f}' for r in rss)} MiB"
    )
    print("\n" + line)
    return line


def test_load_20_users_x_3_messages(load_bot, caplog):
    caplog.set_level(logging.WARNING)
    bot = load_bot()
    run_load(bot, 5, 1, round_offset=100)  # warm up: first generations, connections, imports
    rss = [rss_mib()]
    result = run_load(bot, 20, 3)
    rss.append(rss_mib())
    report("load", result, rss)
    check(result, caplog)
    assert rss[1] - rss[0] < 64, rss  # after warm-up, traffic alone does not grow the process


@pytest.mark.soak
def test_soak_100_users_x_10_messages(load_bot, caplog):
    caplog.set_level(logging.WARNING)
    bot = load_bot()
    run_load(bot, 10, 1, round_offset=100)
    rss = [rss_mib()]
    first = run_load(bot, 100, 10)
    rss.append(rss_mib())
    report("soak", first, rss)
    check(first, caplog)
    second = run_load(bot, 100, 10, round_offset=10)  # the same again: memory must not keep growing
    rss.append(rss_mib())
    report("soak, second pass", second, rss)
    check(second, caplog)
    assert rss[2] - rss[1] < 64, rss
