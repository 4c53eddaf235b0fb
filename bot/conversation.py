"""The transport-independent answer pipeline shared by Telegram and the console.

Per chat: the last question answered (what a follow-up such as "E quando?" leans on) and a lock,
so one chat's questions are answered in order. Each question first retrieves facts from the
knowledge base (inference/grounding.py, the same prompt construction as training and the gate):
with none relevant the bot declines without the model; otherwise the model answers from the facts,
never seeing its earlier answers (a small model copies them), and the faithfulness guard
(inference/faithfulness.py) checks the answer's names and numbers against the facts before it is
sent: an unsupported answer is regenerated greedily, or replaced by the best fact itself. The reply
names the source of the fact the answer used. Retrieval and generation run on worker threads
(generation pumps the engine's blocking stream into the event loop); the loop only awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from common.home import Home
from data.retention import forget_user
from data.store import Store, now
from inference.engine import Chunk, Engine, Generation
from inference.faithfulness import KEPT, QUOTED, guard, quote
from inference.grounding import Fact, FactIndex, Grounding, build_grounded, cite, used_facts

from .settings import BotSettings
from .texts import language as language_of

log = logging.getLogger(__name__)

MAX_CHATS = 10_000  # chats whose context is kept in memory (least recently used are dropped)
PUMP_THREADS = 16  # > the engine's batch, so its fair scheduler always sees the waiting chats
FORGET_WAIT_S = 120  # how long /forget waits for the user's answers in flight before replying


@dataclass(frozen=True)
class Asker:
    """Who asks, where: what the store and the context need from any transport."""

    chat_id: int
    user_id: int
    name: str | None = None
    language: str | None = None
    chat_type: str = "private"
    chat_title: str | None = None


@dataclass(frozen=True)
class Turn:
    user_id: int
    question: str  # answered from facts: a follow-up is searched and asked together with it


@dataclass(frozen=True)
class Answer:
    text: str  # the model's answer, stripped (may be empty), or the decline; what the store logs
    message_id: int | None  # the store's id, used by feedback and corrections; None: the asker /forgot meanwhile
    generation: Generation | None  # None when declined: the model was not asked
    citation: str = ""  # "Source: name — link" of the facts the answer used, "" if none
    facts: tuple[Fact, ...] = ()  # the facts the prompt held, best first
    guard: str = KEPT  # what the faithfulness guard did: kept, regenerated, or fact (the best fact sent)

    @property
    def declined(self) -> bool:
        return self.generation is None

    @property
    def reply(self) -> str:
        """What the user reads: the answer, then the source on a line of its own."""
        return f"{self.text}\n{self.citation}" if self.citation and self.text else self.text


@dataclass
class _Chat:
    previous: Turn | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RateLimiter:
    """Sliding one-minute window per user; says once per window that the user is being limited."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._hits: dict[int, deque[float]] = {}
        self._told: set[int] = set()

    def check(self, user_id: int) -> tuple[bool, bool]:
        """(allowed, tell_the_user): a refused user is told on the first refusal only."""
        now = self.clock()
        hits = self._hits.setdefault(user_id, deque())
        while hits and now - hits[0] >= 60:
            hits.popleft()
        if len(hits) < self.per_minute:
            hits.append(now)
            self._told.discard(user_id)
            return True, False
        tell = user_id not in self._told
        self._told.add(user_id)
        return False, tell

    def forget(self, user_id: int) -> None:
        self._hits.pop(user_id, None)
        self._told.discard(user_id)


class Conversations:
    def __init__(self, engine: Engine, store: Store, settings: BotSettings, index: FactIndex | None = None):
        self.engine = engine
        self.store = store
        self.settings = settings
        self.index = index  # None: answers come from the model alone
        self.quoting = engine.settings.answer_from == "fact"  # ANSWER_FROM: a grounded answer is a fact
        self.rate_limiter = RateLimiter(settings.rate_limit_per_minute)  # questions: they cost model time
        self.update_limiter = RateLimiter(settings.updates_per_minute)  # everything (bot/handlers/limits.py)
        self._chats: OrderedDict[int, _Chat] = OrderedDict()
        self._known_users: dict[int, tuple] = {}  # what the store already has, to skip rewrites
        self._known_chats: dict[int, tuple] = {}
        self._in_flight: dict[int, set[asyncio.Future]] = {}  # per user: questions not yet answered
        self._pool = ThreadPoolExecutor(PUMP_THREADS, thread_name_prefix="answer")
        # Chats whose turn it is, at most one per answer thread; the others wait in line (FIFO)
        # without a "typing…" refresh each, which would eat Telegram's 30 requests/s under load.
        self._turns = asyncio.Semaphore(PUMP_THREADS)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.index is not None:
            self.index.close()

    def reset(self, chat_id: int) -> None:
        self._chats.pop(chat_id, None)

    async def forget_user(self, user_id: int, home: Home) -> dict[str, int]:
        """/forget: delete the user's stored data (data/retention.py), wait for the answers they
        are still being given (the forget's tombstone keeps them out of the store), then drop the
        user from memory. Returns what was deleted per kind."""
        counts = await asyncio.to_thread(forget_user, self.store, home, user_id)
        in_flight = self._in_flight.get(user_id)
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=FORGET_WAIT_S)
        self._drop_from_memory(user_id)
        return counts

    def _drop_from_memory(self, user_id: int) -> None:
        """Drop a user's question from every chat's context, and what is cached about them."""
        for chat in self._chats.values():
            if chat.previous is not None and chat.previous.user_id == user_id:
                chat.previous = None
        self.rate_limiter.forget(user_id)
        self._known_users.pop(user_id, None)
        self._known_chats.pop(user_id, None)  # the private chat's row was deleted too

    def history(self, chat_id: int) -> list[Turn]:
        chat = self._chats.get(chat_id)
        return [chat.previous] if chat and chat.previous else []

    def ground(self, question: str, previous_question: str | None = None, language: str | None = None) -> Grounding:
        """The facts for a question and the prompt holding them (blocking: SQLite).

        Retrieval looks at the question alone, as training and the gate do, except that a
        follow-up is searched and asked with `previous_question`; GROUNDING=false or no knowledge
        base leaves the prompt ungrounded, never declined. `language` (the user's Telegram
        language) decides the answer's language when the question does not tell.
        """
        return build_grounded(
            [{"role": "user", "content": question}],
            self.index,
            self.engine.settings,
            self._count_tokens,
            previous_question,
            default_lang=language_of(language),
        )

    def facts_used_by(self, question: str, answer: str) -> list[Fact]:
        """The facts a logged answer drew on, found again as when it was answered (for /correct)."""
        grounding = self.ground(question)
        return used_facts(answer, grounding.facts, question) if grounding.decline is None else []

    def check(self, grounding: Grounding, question: str, text: str, key: str) -> tuple[str, str, str]:
        """(answer to send, its source line, verdict): the fact the answer drew on (ANSWER_FROM=fact)
        or the answer through the faithfulness guard, then the citation of the facts the sent answer
        used (blocking: the guard may regenerate)."""
        facts = [fact.text for fact in grounding.facts]
        if self.quoting:
            checked = quote(text, facts, question)
        else:
            checked = guard(
                text,
                facts,
                question,
                lambda: self.engine.generate(grounding.messages, key=key, temperature=0.0).text.strip(),
            )
        if checked.verdict not in (KEPT, QUOTED):
            log.info("faithfulness guard: %s (unsupported %s)", checked.verdict, list(checked.unsupported))
        return checked.text, cite(checked.text, grounding.facts, grounding.lang, question), checked.verdict

    def _count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer.encode(text))

    async def ask(
        self,
        asker: Asker,
        question: str,
        on_partial: Callable[[str], Awaitable[None]] | None = None,
        busy: Callable[[], AbstractAsyncContextManager] | None = None,
        deliver: Callable[[Answer], Awaitable[None]] | None = None,
    ) -> Answer:
        """Generate, stream partial text to `on_partial`, log the answer, remember the turn.

        A chat's questions are answered in the order they were asked: the caller must not await
        anything before this, and `deliver(answer)` runs before the next question's turn. `busy()`
        (Telegram's "typing…") is held only during this question's turn, so questions queued
        behind it do not spend the API budget on it.
        """
        asked_at = now()  # a /forget from here on keeps this question out of the store
        done = asyncio.get_running_loop().create_future()
        self._in_flight.setdefault(asker.user_id, set()).add(done)
        try:
            return await self._answer(asker, question, asked_at, on_partial, busy, deliver)
        finally:
            done.set_result(None)
            waiting = self._in_flight[asker.user_id]
            waiting.discard(done)
            if not waiting:
                del self._in_flight[asker.user_id]

    async def _answer(
        self,
        asker: Asker,
        question: str,
        asked_at: str,
        on_partial: Callable[[str], Awaitable[None]] | None,
        busy: Callable[[], AbstractAsyncContextManager] | None,
        deliver: Callable[[Answer], Awaitable[None]] | None,
    ) -> Answer:
        chat = self._chat(asker.chat_id)
        async with chat.lock, self._turns, busy() if busy is not None else contextlib.nullcontext():
            await self._register(asker, asked_at)
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            previous = chat.previous.question if chat.previous else None
            grounding = await loop.run_in_executor(self._pool, self.ground, question, previous, asker.language)
            verdict = KEPT
            if grounding.decline is not None:  # nothing relevant is known: say so, do not invent
                generation, text, citation, used = None, grounding.decline, "", []
            else:
                # a quoted fact replaces the model's words: streaming them would show text then take it back
                partial = None if self.quoting else on_partial
                generation = await self._generate(asker, grounding.messages, partial)
                asked = grounding.messages[-1]["content"]
                text, citation, verdict = await loop.run_in_executor(
                    self._pool, self.check, grounding, asked, generation.text.strip(), f"chat:{asker.chat_id}"
                )
                used = [fact.id for fact in used_facts(text, grounding.facts, question)]
            latency = time.perf_counter() - started
            message_id = await asyncio.to_thread(
                self.store.log_message,
                asker.chat_id,
                asker.user_id,
                question,
                text,
                model_id=generation.model if generation else None,
                adapter_version=generation.adapter if generation else None,
                latency_s=round(latency, 3),
                prompt_tokens=generation.prompt_tokens if generation else None,
                completion_tokens=generation.completion_tokens if generation else None,
                lang=asker.language,
                asked_at=asked_at,
            )
            if message_id is None:
                log.info("answered chat %s after its asker's /forget: not stored", asker.chat_id)
            elif text and generation is not None:  # a decline is nothing to follow up on
                chat.previous = Turn(asker.user_id, question)
            if generation is None:
                log.info(
                    "answered chat %s (message %s): declined, no relevant fact, %.3fs",
                    asker.chat_id,
                    message_id,
                    latency,
                )
            else:
                log.info(
                    "answered chat %s (message %s, adapter %s, %.2fs, %d+%d tokens, facts %s, used %s, guard %s)",
                    asker.chat_id,
                    message_id,
                    generation.adapter,
                    latency,
                    generation.prompt_tokens,
                    generation.completion_tokens,
                    [fact.id for fact in grounding.facts],
                    used,
                    verdict,
                )
            answer = Answer(text, message_id, generation, citation, tuple(grounding.facts), verdict)
            if deliver is not None:
                await deliver(answer)
            return answer

    async def _generate(
        self, asker: Asker, messages: list[dict], on_partial: Callable[[str], Awaitable[None]] | None
    ) -> Generation:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Chunk | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
                stop.set()

        def pump() -> None:
            try:
                for chunk in self.engine.stream(messages, key=f"chat:{asker.chat_id}"):
                    put(chunk)
                    if stop.is_set():
                        return
            except BaseException as error:  # handed to the loop, raised there
                put(error)

        loop.run_in_executor(self._pool, pump)
        text = ""
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                text += item.text
                if item.done is not None:
                    return item.done
                if on_partial is not None and text.strip():
                    await on_partial(text)  # the transport throttles; skipped calls cost nothing
        finally:
            stop.set()

    def _chat(self, chat_id: int) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = _Chat()
            while len(self._chats) > MAX_CHATS:
                self._chats.popitem(last=False)
        self._chats.move_to_end(chat_id)
        return chat

    async def remember_user(
        self, user_id: int, name: str | None, language: str | None, asked_at: str | None = None
    ) -> None:
        """Keep the user's name and language current, writing only on change (and nothing for a
        question its asker has /forgotten since)."""
        user = (name, language)
        if self._known_users.get(user_id) != user:
            await asyncio.to_thread(self.store.upsert_user, user_id, name, language, asked_at=asked_at)
            self._known_users[user_id] = user

    async def _register(self, asker: Asker, asked_at: str) -> None:
        """Keep the user's name/language and the chat's kind current (remember_user)."""
        await self.remember_user(asker.user_id, asker.name, asker.language, asked_at)
        chat = (asker.chat_type, asker.chat_title)
        if self._known_chats.get(asker.chat_id) != chat:
            await asyncio.to_thread(
                self.store.upsert_chat,
                asker.chat_id,
                asker.chat_type,
                asker.chat_title,
                user_id=asker.user_id,
                asked_at=asked_at,
            )
            self._known_chats[asker.chat_id] = chat
