"""Hot swap under load: promote adapters through the registry while chats keep asking the Engine.

The Engine is built as the bot builds it (adapter "auto": it serves what the production pointer
names) on the embedded SmolLM2-135M. `--chats` threads ask questions back to back through
`Engine.stream` (more chats than the Engine's batch, so some always wait, as under real load).
Each swap promotes the next registered version with `Registry.promote`, as the pipeline does, and
then, alternately:

- "callback": calls `engine.refresh_production()`, what the bot's `on_promoted` does after the
  pipeline promotes in-process (the nightly run, /retrain);
- "pointer": does nothing more; the Engine notices the pointer itself, as when
  `python -m training promote` or `rollback` runs in another process.

Measured from the moment `promote()` returns (the pointer names the new version): the first token
generated with the new adapter (as the caller sees it: the first streamed text of the first answer
labelled with the new version) and the first complete answer with it; plus every request that
failed during the whole run. The adapters are random LoRA weights in the shape training makes
(rank 8 on the last 16 layers, tests/models.py make_adapter): the swap cost does not depend on
what the weights learned.

    python bench/hotswap.py [--swaps 6] [--chats 12] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = (
    "Quando foi fundado o Farense?",
    "Who is Farense's greatest idol?",
    "Onde joga o Farense?",
    "What are Farense's colours?",
    "Quem treina o Farense?",
    "Where is the Estádio de São Luís?",
    "O Farense já jogou na Europa?",
    "Who are Farense's rivals?",
)


@dataclass(frozen=True)
class Answer:
    submitted: float
    first: float | None  # the first streamed text
    end: float
    adapter: str | None
    error: str | None = None


class Load:
    """Chats asking back to back, each answer recorded with the adapter that produced it."""

    def __init__(self, engine, chats: int, max_tokens: int):
        self.engine, self.max_tokens = engine, max_tokens
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._chat, args=(n,), name=f"chat-{n}") for n in range(chats)]

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _chat(self, number: int) -> None:
        turn = 0
        while not self.stop.is_set():
            question = QUESTIONS[(number + turn) % len(QUESTIONS)]
            turn += 1
            submitted, first = time.perf_counter(), None
            try:
                for chunk in self.engine.stream(
                    [{"role": "user", "content": question}], key=f"chat-{number}", max_tokens=self.max_tokens
                ):
                    if first is None:
                        first = time.perf_counter()
                    if chunk.done is not None:
                        adapter = chunk.done.adapter
                self.answers.append(Answer(submitted, first, time.perf_counter(), adapter))
            except Exception as error:  # counted and printed: a failed request during the swap
                self.answers.append(
                    Answer(submitted, first, time.perf_counter(), None, f"{type(error).__name__}: {error}")
                )


def wait_until(condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the engine stopped answering")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--chats", type=int, default=12, help="more than the batch: some always wait")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)

    home = Path(tempfile.mkdtemp(prefix="farense-bench-hotswap-"))
    os.environ["FARENSE_HOME"] = str(home)
    import inference  # noqa: F401  (the optimized BLAS before mlx)
    from inference.engine import Engine
    from inference.modelstore import resolve_model
    from inference.settings import InferenceSettings
    from tests.models import make_adapter
    from training.lifecycle.registry import Registry

    settings = InferenceSettings.load()
    model_dir = Path(resolve_model(settings.model_path, settings.home.models))
    registry = Registry(home, base_model=model_dir)
    versions = [
        registry.add_candidate(
            make_adapter(model_dir, home / "incoming" / f"a{i}", rank=8, num_layers=16, seed=i + 1)
        ).version
        for i in range(args.swaps + 1)
    ]
    registry.promote(versions[0], by="bench", reason="starting point")
    engine = Engine(settings)  # "auto", as the bot: follows the production pointer
    print(
        f"model {engine.info.model_id}, max_batch {engine.max_batch}, {args.chats} chats asking back to back, "
        f"max_tokens {args.max_tokens}; adapters rank 8 × 16 layers; serving {engine.adapter_version}"
    )
    load = Load(engine, args.chats, args.max_tokens).start()
    rows = []
    try:
        wait_until(lambda: len(load.answers) >= 2 * args.chats)  # steady state
        for number, version in enumerate(versions[1:]):
            mode = "callback" if number % 2 == 0 else "pointer"
            time.sleep(random.uniform(1.0, 3.0))  # promote at an arbitrary point of the answers in flight
            registry.promote(version, by="bench", reason="hot swap bench")
            promoted = time.perf_counter()
            if mode == "callback":
                engine.refresh_production()
            wait_until(lambda version=version: engine.adapter_version == version)
            switched = time.perf_counter() - promoted
            wait_until(lambda version=version: any(a.adapter == version for a in load.answers))
            new = [a for a in load.answers if a.adapter == version]
            in_flight = [a for a in load.answers if a.submitted < promoted < a.end and a.adapter != version]
            rows.append(
                {
                    "mode": mode,
                    "version": version,
                    "switched": switched,
                    "first_token": min(a.first for a in new) - promoted,
                    "first_answer": min(a.end for a in new) - promoted,
                    "old_after": max((a.end for a in in_flight), default=promoted) - promoted,
                }
            )
            row = rows[-1]
            print(
                f"  swap {number + 1} ({mode:<8}) → {version}: serving it after {switched:.2f} s, "
                f"first token {row['first_token']:.2f} s, "
                f"first answer {row['first_answer']:.2f} s (answers in flight finished "
                f"{row['old_after']:.2f} s after the promotion)",
                flush=True,
            )
    finally:
        load.close()
        engine.close()
        shutil.rmtree(home, ignore_errors=True)

    failed = [a for a in load.answers if a.error is not None]
    print(
        f"\n{'mode':<9} {'swaps':>5} {'serving new p50':>16} {'max':>6} {'first token p50':>16} {'max':>6} "
        f"{'first answer p50':>17} {'max':>6}"
    )
    for mode in ("callback", "pointer"):
        picked = [r for r in rows if r["mode"] == mode]
        if picked:
            cells = [[r[k] for r in picked] for k in ("switched", "first_token", "first_answer")]
            print(
                f"{mode:<9} {len(picked):>5} "
                + " ".join(f"{statistics.median(c):>{w}.2f} s {max(c):>5.2f}" for c, w in zip(cells, (14, 14, 15)))
            )
    steady = [a.first - a.submitted for a in load.answers if a.first is not None and a.error is None]
    print(
        f"for comparison, time to first token of every answer in the run: p50 "
        f"{statistics.median(steady):.2f} s, max {max(steady):.2f} s (load average {os.getloadavg()[0]:.1f})"
    )
    print(f"requests: {len(load.answers)} answered, {len(failed)} failed")
    for answer in failed[:5]:
        print(f"  failed: {answer.error}")


if __name__ == "__main__":
    main()
