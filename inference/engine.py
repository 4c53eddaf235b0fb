"""The Engine: one loaded model shared by every chat, generating on a single worker thread.

Requests from any thread are batched together with mlx-lm's BatchGenerator (continuous batching),
so eight chats decode in one forward pass instead of waiting in line. Admission to the batch is
round-robin over chat keys, so one busy chat cannot starve the others.

Adapter swaps happen on the worker thread and take effect at once: each adapter has its own lane
(its LoRA layers and its own batch). New requests go to the newest lane while the previous one
finishes what it started, the two taking turns step by step; so no answer waits for others to end
before the new adapter serves, and none is produced by two adapters.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import Adapter, AdapterError, read_adapter, read_production
from .loading import load_base
from .lora import apply_adapter, lora_layers, mount_layers, remove_adapter
from .prompts import render_prompt
from .sampling import make_sampler
from .settings import InferenceSettings

log = logging.getLogger(__name__)

POINTER_CHECK_S = 0.1  # how often a busy engine looks at the production pointer (one stat call)


class GenerationError(RuntimeError):
    """Generation failed inside the model; the request gets this instead of text."""


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_seconds: float
    finish_reason: str
    model: str
    adapter: str | None


@dataclass
class Chunk:
    """One streamed piece: `text` is the new text; the last chunk also carries `done`."""

    text: str
    done: Generation | None = None


@dataclass
class _Request:
    key: str
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    events: queue.Queue[Chunk | BaseException] = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Active:
    request: _Request
    detokenizer: object
    adapter: str | None
    tokens: int = 0
    first_token_at: float | None = None


@dataclass
class _Lane:
    """The requests one adapter serves: its LoRA layers (mounted on the shared base model for its
    turn) and its own BatchGenerator, whose KV caches were built with those weights."""

    adapter: Adapter | None
    layers: list  # (module path, LoRA layer) pairs
    generator: object | None = None
    active: dict[int, _Active] = field(default_factory=dict)


class Engine:
    def __init__(self, settings: InferenceSettings, *, adapter: Path | None | str = "auto", max_batch: int = 8):
        """Load the base model; `adapter` = a folder, None for none, "auto" = production pointer.

        All MLX work, loading included, happens on the engine's own thread: MLX streams belong to
        a thread, and sharing model arrays across threads made MLX abort at interpreter exit.
        """
        self.settings = settings
        self.max_batch = max_batch
        self.adapter: Adapter | None = None
        # An adapter refused (files that fail their checksums, or do not fit): the last reason, and
        # who to tell (the bot tells its admins); called on whichever thread found it.
        self.refused: str | None = None
        self.on_refused: Callable[[str], None] | None = None
        # "auto" without ADAPTER_PATH follows the production pointer, also when another process
        # (`python -m training promote`/`rollback`) moves it: checked every POINTER_CHECK_S while serving.
        self._follow_production = adapter == "auto" and settings.adapter_path is None
        self._pointer_seen: tuple[int, int] | None = self._pointer_stamp()
        self._pointer_checked = time.monotonic()
        try:
            if adapter == "auto":
                adapter = settings.adapter_path or self._production_folder()
            initial = read_adapter(Path(adapter), self._production_version(Path(adapter))) if adapter else None
        except AdapterError as error:  # a broken production adapter must not keep the bot down
            if not self._follow_production:
                raise
            self._unusable_production(error)
            initial = None
        self._pending: OrderedDict[str, deque[_Request]] = OrderedDict()
        self._swap_requests: queue.Queue[tuple[Adapter | None, threading.Event, list]] = queue.Queue()
        self._wake = threading.Condition()
        self._closed = False
        loaded: list = []
        ready = threading.Event()
        # Not a daemon: MLX aborts at interpreter exit once a daemon thread has run ops. Like
        # concurrent.futures, ask threading to close the engine before it joins its threads.
        self._worker = threading.Thread(target=self._run, args=(initial, loaded, ready), name="mlx-engine")
        self._worker.start()
        ready.wait()
        if loaded and isinstance(loaded[0], BaseException):
            self._worker.join()
            raise loaded[0]
        threading._register_atexit(self.close)

    # ----- public API -------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def adapter_version(self) -> str | None:
        return self.adapter.version if self.adapter else None

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        return render_prompt(self.tokenizer, messages, self.settings.system_prompt)

    def stream(
        self,
        messages: list[dict],
        *,
        key: str = "default",
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Iterator[Chunk]:
        """Yield text chunks as they are generated; the last chunk has `done` set."""
        request = self.submit(messages, key=key, max_tokens=max_tokens, temperature=temperature)
        try:
            while True:
                event = request.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if event.done is not None:
                    return
        finally:
            request.cancelled.set()

    def generate(self, messages: list[dict], **kwargs) -> Generation:
        for chunk in self.stream(messages, **kwargs):
            if chunk.done is not None:
                return chunk.done
        raise GenerationError("generation ended without a result")

    def submit(
        self,
        messages: list[dict],
        *,
        key: str = "default",
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> _Request:
        if self._closed:
            raise GenerationError("the engine is closed")
        request = _Request(
            key=key,
            prompt=self.prompt_tokens(messages),
            max_tokens=max_tokens or self.settings.max_tokens,
            temperature=self.settings.temperature if temperature is None else temperature,
            top_p=self.settings.top_p,
        )
        with self._wake:
            self._pending.setdefault(key, deque()).append(request)
            self._wake.notify()
        return request

    def queue_length(self) -> int:
        with self._wake:
            return sum(len(q) for q in self._pending.values())

    def set_adapter(self, folder: Path | None, version: str | None = None, timeout: float = 120) -> None:
        """Swap the served adapter between requests; raises AdapterError and keeps the old one."""
        adapter = read_adapter(Path(folder), version) if folder is not None else None
        done, outcome = threading.Event(), []
        self._swap_requests.put((adapter, done, outcome))
        with self._wake:
            self._wake.notify()
        if not done.wait(timeout):
            raise TimeoutError("adapter swap did not happen in time (engine busy?)")
        if outcome and isinstance(outcome[0], BaseException):
            raise outcome[0]

    def refresh_production(self) -> bool:
        """Serve whatever the production pointer names now; True when it changed. An adapter that
        fails its checks is refused (reported to `on_refused`) and the current one keeps serving."""
        current = read_production(self.settings.farense_home)
        wanted = (current[0], current[1]) if current else (None, None)
        if wanted[0] == self.adapter_version:
            return False
        try:
            self.set_adapter(wanted[1], wanted[0])
        except AdapterError as error:
            self._refuse(error)
            return False
        return True

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join(timeout=30)

    # ----- worker thread ----------------------------------------------------------------------
    def _pointer_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.settings.home.production_pointer.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    def _check_production_pointer(self) -> None:
        """Every POINTER_CHECK_S at most: queue a swap when the pointer names another version."""
        now = time.monotonic()
        if not self._follow_production or now - self._pointer_checked < POINTER_CHECK_S:
            return
        self._pointer_checked = now
        stamp = self._pointer_stamp()
        if stamp == self._pointer_seen:
            return
        self._pointer_seen = stamp
        try:
            current = read_production(self.settings.farense_home)
            if (current[0] if current else None) == self.adapter_version:
                return
            adapter = read_adapter(current[1], current[0]) if current else None
        except Exception as error:  # whatever is on disk, the serving loop goes on
            log.error(
                "production pointer changed but its adapter is unusable, still serving %s: %s",
                self.adapter_version or "the base model",
                error,
            )
            self._refuse(error)
            return
        self._swap_requests.put((adapter, threading.Event(), []))

    def _unusable_production(self, error: Exception) -> None:
        log.error(
            "the production adapter is unusable, serving the base model until a working version is "
            "promoted or rolled back to (python -m training rollback): %s",
            error,
        )
        self._refuse(error)

    def _refuse(self, error: Exception) -> None:
        """Remember and report a refused adapter, once per distinct reason."""
        message = f"{error}; still serving {self.adapter_version or 'the base model'}"
        if message == self.refused:
            return
        self.refused = message
        if self.on_refused is not None:
            try:
                self.on_refused(message)
            except Exception:  # telling someone must never stop the serving loop
                log.exception("reporting a refused adapter failed")

    def _production_folder(self) -> Path | None:
        current = read_production(self.settings.farense_home)
        return current[1] if current else None

    def _production_version(self, folder: Path) -> str | None:
        current = read_production(self.settings.farense_home)
        return current[0] if current and Path(current[1]) == folder else None

    def _open_lane(self, adapter: Adapter | None) -> None:
        """Serve `adapter` from now on; the lane serving before keeps its answers in flight."""
        previous = self._lanes[-1] if self._lanes else None
        remove_adapter(self.model)
        self._mounted = None
        if adapter is not None:
            try:
                apply_adapter(self.model, adapter, self.info.layout)
            except Exception:
                remove_adapter(self.model)
                if previous is not None:  # back to what was served before
                    self._mount(previous)
                raise
        self.model.eval()
        lane = _Lane(adapter, lora_layers(self.model))
        self._mounted = lane
        self._lanes = [old for old in self._lanes if old.active] + [lane]
        log.info("adapter now %s", adapter.version if adapter else "none (base model)")
        self.adapter = adapter

    def _mount(self, lane: _Lane) -> None:
        if self._mounted is not lane:
            mount_layers(self.model, lane.layers)
            self._mounted = lane

    def _next_request(self) -> _Request | None:
        """Round-robin over chat keys: take the oldest request of the next key in line."""
        for key in list(self._pending):
            requests = self._pending.pop(key)
            request = requests.popleft()
            if requests:
                self._pending[key] = requests  # goes to the back of the line
            if not request.cancelled.is_set():
                return request
        return None

    def _run(self, initial: Adapter | None, loaded: list, ready: threading.Event) -> None:
        import mlx.core as mx

        try:
            settings = self.settings
            self.model, self.tokenizer, self.info = load_base(
                settings.model_path, settings.home.models, settings.device, settings.cpu_dtype
            )
            from mlx_lm.generate import generation_stream as stream

            self._lanes: list[_Lane] = []  # the last one serves new requests, the others drain
            self._mounted: _Lane | None = None
            try:
                self._open_lane(initial)
            except Exception as error:
                if not self._follow_production:
                    raise
                self._unusable_production(error)
                self._open_lane(None)
        except BaseException as error:
            loaded.append(error)
            ready.set()
            mx.clear_streams()
            return
        ready.set()
        try:
            with mx.stream(stream):
                self._serve(stream)
        finally:
            mx.clear_streams()  # MLX's rule: each thread that ran ops clears its streams at its end

    def _serve(self, stream) -> None:
        from mlx_lm.sample_utils import make_logits_processors

        penalty = make_logits_processors(repetition_penalty=self.settings.repetition_penalty)
        while True:
            self._check_production_pointer()
            with self._wake:
                busy = any(lane.active for lane in self._lanes)
                if not self._closed and not busy and not self._pending and self._swap_requests.empty():
                    self._wake.wait()
                    continue  # look at the production pointer before admitting what woke us
                if self._closed:
                    break
                serving = self._lanes[-1]
                new = []
                while self._swap_requests.empty() and len(serving.active) + len(new) < self.max_batch:
                    request = self._next_request()
                    if request is None:
                        break
                    new.append(request)
            if not self._swap_requests.empty():
                adapter, done, outcome = self._swap_requests.get()
                try:
                    self._open_lane(adapter)
                except Exception as error:  # reported to the caller (and here), serving goes on
                    outcome.append(error)
                    log.error(
                        "could not swap to adapter %s, still serving %s: %s",
                        adapter.version if adapter else None,
                        self.adapter_version or "the base model",
                        error,
                    )
                done.set()
                continue
            for lane in self._lanes:
                self._step(lane, new if lane is serving else [], stream, penalty)
            self._lanes = [lane for lane in self._lanes[:-1] if lane.active] + self._lanes[-1:]
        for lane in self._lanes:
            for item in lane.active.values():
                item.request.events.put(GenerationError("the engine was closed"))

    def _step(self, lane: _Lane, new: list[_Request], stream, penalty) -> None:
        """Admit `new` into the lane's batch and generate one token for each of its requests."""
        from mlx_lm.generate import BatchGenerator

        if not lane.active and not new:
            return
        self._mount(lane)
        try:
            if lane.generator is None:
                lane.generator = BatchGenerator(
                    self.model,
                    completion_batch_size=self.max_batch,
                    prefill_batch_size=self.max_batch,
                    stream=stream,
                    stop_tokens=[[t] for t in self.tokenizer.eos_token_ids],
                )
            if new:
                uids = lane.generator.insert(
                    [r.prompt for r in new],
                    [r.max_tokens for r in new],
                    samplers=[make_sampler(r.temperature, r.top_p) for r in new],
                    logits_processors=[penalty for _ in new],
                )
                for uid, request in zip(uids, new):
                    lane.active[uid] = _Active(
                        request, self.tokenizer.detokenizer, lane.adapter.version if lane.adapter else None
                    )
            responses = lane.generator.next_generated()
        except Exception as error:
            log.exception("generation failed")
            failure = GenerationError(f"generation failed: {type(error).__name__}: {error}")
            for item in lane.active.values():
                item.request.events.put(failure)
            lane.active.clear()
            lane.generator = None
            return
        finished = [uid for uid in (self._deliver(lane.active, r) for r in responses) if uid is not None]
        cancelled = [uid for uid, item in lane.active.items() if item.request.cancelled.is_set()]
        if cancelled:
            lane.generator.remove(cancelled)
        for uid in set(finished) | set(cancelled):
            lane.active.pop(uid, None)

    def _deliver(self, active: dict[int, _Active], response) -> int | None:
        item = active.get(response.uid)
        if item is None:
            return None
        now = time.perf_counter()
        if item.first_token_at is None:
            item.first_token_at = now
        detokenizer = item.detokenizer
        if response.finish_reason != "stop":
            item.tokens += 1
            detokenizer.add_token(response.token)
        if response.finish_reason is None:
            if segment := detokenizer.last_segment:
                item.request.events.put(Chunk(segment))
            return None
        detokenizer.finalize()
        request = item.request
        done = Generation(
            text=detokenizer.text,
            prompt_tokens=len(request.prompt),
            completion_tokens=item.tokens,
            seconds=now - request.submitted,
            first_token_seconds=item.first_token_at - request.submitted,
            finish_reason=response.finish_reason,
            model=self.model_id,
            adapter=item.adapter,
        )
        request.events.put(Chunk(detokenizer.last_segment, done))
        return response.uid
