"""What the bot costs outside the model, per message, under 50 concurrent users; and its memory.

The real PTB Application (`bot.app.build_application`: handlers, AIORateLimiter, store, streaming
drafts every STREAM_EDIT_INTERVAL) polls the loopback Bot API server of the tests over HTTP. Each
of `--users` private chats asks `--questions` questions, the next one as soon as the answer
arrives, all chats at once. Two runs, side by side:

- "model": the Engine on the embedded SmolLM2-135M (MAX_TOKENS `--max-tokens`). Timestamps taken
  where the message passes: the server completing the getUpdates call that delivers it (t0),
  `Conversations.ask` entered, its turn among the answer threads taken, `Engine.stream` called and
  its last chunk out, the server receiving the final answer (the message with the 👍/👎 buttons,
  t1). Outside the model = t1 - t0 - (waiting for a turn) - (Engine.stream: queueing for the
  batch and generating). Waiting for a turn is left out because the bot holds a question there
  only while the model is busy with others (at most PUMP_THREADS chats are let through).
- "instant": the same, with an Engine stand-in that streams a fixed 48-token answer at once (the
  real tokenizer still builds the prompts). Here t1 - t0 is all overhead, without the model
  competing for the two cores — but the users ask faster, so Telegram's flood limit of 30 calls/s
  (PTB's AIORateLimiter) queues the calls.

Peak RSS of the process (the bot, plus the loopback server and this driver, which are small) is
sampled every 50 ms with psutil during the model run.

    python bench/bot_overhead.py [--users 50] [--questions 2] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "123456:FARENSE-bench-token"
FIRST_USER = 20_000
QUESTIONS = (
    "Quando foi fundado o Farense?",
    "Who founded Farense?",
    "Onde joga o Farense?",
    "What are Farense's colours?",
    "Qual é a alcunha do Farense?",
    "When did Farense play in Europe?",
    "Em que divisão joga o Farense?",
    "Where is the Estádio de São Luís?",
)
CANNED = (
    "O Sporting Clube Farense foi fundado em 1910, em Faro, e joga no Estádio de São Luís. "
    "As cores do clube são o preto e o branco, e os adeptos chamam-lhe os Leões de Faro."
)
_chat = contextvars.ContextVar("chat")


@dataclass
class Message:
    pushed: float
    delivered: float | None = None
    asked: float | None = None
    turn: float | None = None
    model_start: float | None = None
    model_end: float | None = None
    final: float | None = None
    failed: bool = False


class Probe:
    """Timestamps per chat (one question in flight per chat) and the closed-loop users."""

    def __init__(self, server, users: int, questions: int):
        self.server, self.questions = server, questions
        self.chats = {FIRST_USER + n: [] for n in range(users)}
        self.finals: queue.Queue[int] = queue.Queue()
        self.done = threading.Event()
        original = server.state.record

        def record(call) -> None:
            now = time.perf_counter()
            original(call)
            if call.method == "getUpdates" and call.ok:
                for update in call.response["result"]:
                    chat = update.get("message", {}).get("chat", {}).get("id")
                    if chat in self.chats and self.chats[chat][-1].delivered is None:
                        self.chats[chat][-1].delivered = now
            elif call.method == "sendMessage" and call.params.get("chat_id") in self.chats:
                message = self.chats[call.params["chat_id"]][-1]
                if message.final is None:  # the answer (with buttons) or the apology (without)
                    message.final, message.failed = now, "reply_markup" not in call.params or not call.ok
                    self.finals.put(call.params["chat_id"])

        server.state.record = record

    def ask(self, chat: int) -> None:
        asked = len(self.chats[chat])
        self.chats[chat].append(Message(time.perf_counter()))
        self.server.push_message(
            chat,
            chat,
            f"{QUESTIONS[(chat + asked) % len(QUESTIONS)]}",
            first_name=f"User {chat}",
            language_code="pt" if chat % 2 else "en",
        )

    def run(self, timeout: float) -> float:
        started = time.perf_counter()
        for chat in self.chats:
            self.ask(chat)
        remaining = len(self.chats) * self.questions
        while remaining:
            chat = self.finals.get(timeout=timeout)
            remaining -= 1
            if len(self.chats[chat]) < self.questions:
                self.ask(chat)
        return time.perf_counter() - started

    def instrument(self, conversations, engine) -> None:
        """Wrap the conversation's entry, its turn semaphore and the engine's stream with clocks."""
        from bot.conversation import PUMP_THREADS

        ask, stream = conversations.ask, engine.stream

        async def timed_ask(asker, question, *args, **kwargs):
            _chat.set(asker.chat_id)
            self.chats[asker.chat_id][-1].asked = time.perf_counter()
            return await ask(asker, question, *args, **kwargs)

        probe = self

        class TimedTurns(asyncio.Semaphore):
            async def __aenter__(self):
                await super().__aenter__()
                probe.chats[_chat.get()][-1].turn = time.perf_counter()

        def timed_stream(messages, *, key, **kwargs):
            message = self.chats[int(key.removeprefix("chat:"))][-1]
            message.model_start = time.perf_counter()
            for chunk in stream(messages, key=key, **kwargs):
                if chunk.done is not None:
                    message.model_end = time.perf_counter()
                yield chunk

        conversations.ask = timed_ask
        conversations._turns = TimedTurns(PUMP_THREADS)
        engine.stream = timed_stream

    def figures(self) -> dict:
        messages = [m for chat in self.chats.values() for m in chat]
        answered = [m for m in messages if m.final is not None and not m.failed]
        generated = [m for m in answered if m.model_end is not None]

        def spans(start: str, end: str) -> list[float]:
            return [getattr(m, end) - getattr(m, start) for m in answered]

        total = spans("delivered", "final")
        waiting = spans("asked", "turn")
        model = [(m.model_end - m.model_start) if m.model_end else 0.0 for m in answered]
        return {
            "messages": len(messages),
            "answered": len(answered),
            "failed": sum(m.failed for m in messages),
            "declined": len(answered) - len(generated),
            "total": total,
            "model": model,
            "waiting": waiting,
            "outside": [t - w - g for t, w, g in zip(total, waiting, model)],
            "dispatch": spans("delivered", "asked"),
            "before_model": [m.model_start - m.turn for m in generated],
            "after_model": [m.final - m.model_end for m in generated],
        }


class InstantEngine:
    """The Engine's interface with answers that take no time: only the bot's own work remains."""

    def __init__(self, engine):
        self._engine = engine
        self._pieces = [engine.tokenizer.decode([t]) for t in engine.tokenizer.encode(CANNED)][:48]

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def stream(self, messages, *, key="default", **kwargs):
        from inference.engine import Chunk, Generation

        prompt = len(self.prompt_tokens(messages))
        for piece in self._pieces[:-1]:
            yield Chunk(piece)
        text = "".join(self._pieces)
        yield Chunk(
            self._pieces[-1],
            Generation(text, prompt, len(self._pieces), 0.0, 0.0, "length", self.model_id, self.adapter_version),
        )


class RssSampler(threading.Thread):
    def __init__(self):
        super().__init__(name="rss-sampler", daemon=True)
        self.process, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)


def run(label: str, engine, store, server, args) -> dict:
    from bot.app import build_application
    from bot.settings import BotSettings
    from data.settings import DataSettings
    from tests.helpers import RunningBot

    settings = BotSettings.load(
        telegram_bot_token=TOKEN, telegram_base_url=server.base_url, admin_user_ids=(1,), rate_limit_per_minute=1000
    )
    application = build_application(settings, engine, store, data_settings=DataSettings.load())
    probe = Probe(server, args.users, args.questions)
    probe.instrument(application.bot_data["services"].conversations, engine)
    bot = RunningBot(server, application, engine, store).start()  # the tests' harness
    try:
        seconds = probe.run(timeout=600)
    finally:
        bot.stop()
    result = probe.figures()
    print(
        f"  {label}: {result['answered']} answered ({result['declined']} declined without the model, "
        f"{result['failed']} failed) in {seconds:.1f} s",
        flush=True,
    )
    return result


def percentiles(values: list[float]) -> str:
    if not values:
        return f"{'-':>8} {'-':>8}"
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return f"{pick(0.5) * 1000:>8.0f} {pick(0.99) * 1000:>8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--questions", type=int, default=2, help="per user, one after the other")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="farense-bench-bot-"))
    os.environ["FARENSE_HOME"] = str(home)
    rss = RssSampler()
    rss.start()
    import inference  # noqa: F401  (the optimized BLAS before mlx)
    from data.settings import DataSettings
    from data.store import Store
    from inference.engine import Engine
    from inference.settings import InferenceSettings
    from tests.botapi import BotApiServer

    baseline = psutil.Process().memory_info().rss
    engine = Engine(InferenceSettings.load(max_tokens=args.max_tokens))
    loaded = psutil.Process().memory_info().rss
    print(
        f"model {engine.info.model_id} on {engine.info.device} ({engine.info.dtype}, {engine.info.blas}); "
        f"{args.users} users × {args.questions} questions, each asked when the previous answer arrived; "
        f"max_tokens {args.max_tokens}"
    )
    store = Store(DataSettings.load().home.database)
    server = BotApiServer(TOKEN).start()
    results = {}
    try:
        rss.peak = 0
        results["model"] = run("model", engine, store, server, args)
        peak = rss.peak
        results["instant"] = run("instant", InstantEngine(engine), store, server, args)
    finally:
        server.stop()
        store.close()
        engine.close()
        rss.stop.set()
        shutil.rmtree(home, ignore_errors=True)

    print(f"\n{'ms per message':<26} {'model p50':>9} {'p99':>8} {'instant p50':>12} {'p99':>8}")
    rows = (
        ("outside the model", "outside"),
        ("  update → handler", "dispatch"),
        ("  turn → Engine.stream", "before_model"),
        ("  last token → answer sent", "after_model"),
        ("waiting for a turn", "waiting"),
        ("Engine.stream", "model"),
        ("update → answer sent", "total"),
    )
    for name, key in rows:
        model, instant = results["model"][key], results["instant"][key]
        print(f"{name:<26} {percentiles(model)} {'':>3}{percentiles(instant)}")
    mib = 2**20
    print(
        f"\nRSS: {baseline / mib:.0f} MiB before the model, {loaded / mib:.0f} MiB with it loaded, "
        f"peak {peak / mib:.0f} MiB serving {args.users} users (load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
