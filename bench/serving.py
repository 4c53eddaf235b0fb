"""Serving throughput through the bot's Engine: N concurrent chats vs the same requests one by one,
and a single stream through the Engine vs bare `mlx_lm.stream_generate` on the same loaded model.

One Engine as the bot builds it (embedded SmolLM2-135M, float32 + OpenBLAS on CPU, the bot's
sampling: temperature, top-p, repetition penalty from the settings). For each N, N chats ask at
once, and right after, the baseline: SEQUENTIAL_SAMPLE of the same kind of requests one after the
other (a server without batching). Measuring the baseline next to each concurrent run, in an order
that alternates between rounds, keeps machine noise (other jobs share the cores) out of the
ratio. Tokens are counted as generated (an answer that ends early counts what it produced; the
finish reasons are printed).

- aggregate tok/s = completion tokens / wall time from the moment the requests are submitted to
  the last answer (prefill included);
- time to first token (TTFT) = from that moment to the first streamed text of an answer, as the
  caller sees it. Sequentially, request i of N waits for the i before it: i × the mean duration
  of a sequential answer + its own TTFT (the N requests arrive together, as in the concurrent run);
- single stream: decode tok/s = (tokens - 1) / (last token - first token), A B A B… runs of the
  same prompt with the same sampling (temperature, top-p, repetition penalty); mlx-lm runs on the
  Engine's model with mlx-lm's own sampler, the Engine with inference/sampling.py's.

    python bench/serving.py [--rounds 2] [--max-tokens 48] [--chats 1,4,8,16] [--pairs 24]

The model comes from MODELS_DIR (default $FARENSE_HOME/models; the tests' cache is
~/.cache/farense-tests/models). FARENSE_HOME is a scratch folder: no adapter is served.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROMPTS = (  # long-form asks: with max_tokens 48 nearly all of them run to the limit
    "Write a long, detailed history of SC Farense, the football club of Faro, decade by decade.",
    "Explain the rules of football to a child who has never seen a match, step by step, at length.",
    "List twenty facts about the Algarve region of Portugal and explain each one in a sentence.",
    "Write a detailed match report of an imaginary game between Farense and Olhanense.",
    "Write a long guide for a visitor to Faro who wants to watch a Farense home game.",
    "Explain in detail how a football club's youth academy works, from under-7 to the first team.",
    "List fifteen famous Portuguese football clubs and describe each one in two sentences.",
    "Write a long essay about the city of Faro: its history, monuments, beaches and food.",
    "Describe, step by step and at length, how a professional footballer trains during a week.",
    "List twenty tips for a young player who dreams of playing for SC Farense, with an explanation each.",
    "Write a detailed report of an imaginary cup final between Farense and Benfica, minute by minute.",
    "Explain at length how the Portuguese football league system works, division by division.",
    "Write a long story about a boy from Faro who grows up to captain SC Farense.",
    "List ten famous stadiums in Portugal and describe each one in detail.",
    "Describe in detail a full season of an imaginary football club, month by month.",
    "Write a long, detailed guide to the tactics of modern football: formations, pressing, transitions.",
)


@dataclass(frozen=True)
class Answer:
    first: float  # seconds from the common start to the first streamed text
    end: float  # ... to the final chunk
    tokens: int
    finish: str


SEQUENTIAL_SAMPLE = 3  # answers one by one after each concurrent run: the baseline measured next to it


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ask(engine, index: int, max_tokens: int, start: float) -> Answer:
    """One chat's answer through `Engine.stream`, the call the bot makes."""
    messages = [{"role": "user", "content": PROMPTS[index]}]
    first = None
    for chunk in engine.stream(messages, key=f"chat-{index}", max_tokens=max_tokens):
        if first is None:
            first = time.perf_counter() - start
        if chunk.done is not None:
            done = chunk.done
    return Answer(first, time.perf_counter() - start, done.completion_tokens, done.finish_reason)


def sequential(engine, first: int, count: int, max_tokens: int) -> list[Answer]:
    start = time.perf_counter()
    return [ask(engine, (first + i) % len(PROMPTS), max_tokens, start) for i in range(count)]


def concurrent(engine, count: int, max_tokens: int) -> list[Answer]:
    answers: list[Answer | None] = [None] * count
    barrier = threading.Barrier(count + 1)
    start_box: list[float] = []

    def chat(index: int) -> None:
        barrier.wait()
        answers[index] = ask(engine, index, max_tokens, start_box[0])

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start_box.append(time.perf_counter())
    barrier.wait()
    for thread in threads:
        thread.join()
    return answers


def throughput(answers: list[Answer]) -> float:
    return sum(a.tokens for a in answers) / max(a.end for a in answers)


def engine_stream(engine, prompt: list[dict], max_tokens: int) -> tuple[int, float]:
    for chunk in engine.stream(prompt, key="single", max_tokens=max_tokens):
        if chunk.done is not None:
            done = chunk.done
    return done.completion_tokens, (done.completion_tokens - 1) / (done.seconds - done.first_token_seconds)


def bare_stream(engine, prompt: list[dict], max_tokens: int) -> tuple[int, float]:
    """mlx-lm's own loop on the Engine's model (the Engine is idle meanwhile), same sampling."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    s = engine.settings
    sampler = make_sampler(s.temperature, s.top_p)
    processors = make_logits_processors(repetition_penalty=s.repetition_penalty)
    tokens, first = 0, None
    for _ in stream_generate(
        engine.model,
        engine.tokenizer,
        engine.prompt_tokens(prompt),
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=processors,
    ):
        tokens += 1
        if first is None:
            first = time.perf_counter()
    return tokens, (tokens - 1) / (time.perf_counter() - first)


def run_concurrency(engine, chats: list[int], rounds: int, max_tokens: int) -> None:
    ratios = {n: [] for n in chats}
    rates = {n: ([], []) for n in chats}  # (concurrent, sequential) tok/s of each round
    ttft = {n: ([], []) for n in chats}
    finishes: Counter = Counter()
    offset = 0
    for round_ in range(rounds):
        for n in chats if round_ % 2 == 0 else reversed(chats):
            together = concurrent(engine, n, max_tokens)
            alone = sequential(engine, offset, SEQUENTIAL_SAMPLE, max_tokens)
            offset += SEQUENTIAL_SAMPLE
            finishes.update(a.finish for a in together + alone)
            conc, base = throughput(together), throughput(alone)
            ratios[n].append(conc / base)
            rates[n][0].append(conc)
            rates[n][1].append(base)
            starts = [0.0] + [a.end for a in alone[:-1]]  # back to back: each starts when the last ended
            duration = statistics.mean(a.end - start for a, start in zip(alone, starts))
            own = statistics.mean(a.first - start for a, start in zip(alone, starts))
            ttft[n][0].extend(a.first for a in together)
            ttft[n][1].extend(i * duration + own for i in range(n))
        print(f"  round {round_ + 1}: " + ", ".join(f"{n} chats {ratios[n][-1]:.2f}×" for n in chats), flush=True)
    print(
        f"\n{'chats':>5} {'concurrent tok/s':>17} {'sequential tok/s':>17} {'× seq':>6} "
        f"{'TTFT p50 / p95 s':>17} {'seq TTFT p50 / p95 s':>21}"
    )
    for n in chats:
        conc_ttft, seq_ttft = ttft[n]
        print(
            f"{n:>5} {statistics.median(rates[n][0]):>17.1f} {statistics.median(rates[n][1]):>17.1f} "
            f"{statistics.median(ratios[n]):>6.2f} "
            f"{percentile(conc_ttft, 0.5):>8.2f} / {percentile(conc_ttft, 0.95):<6.2f} "
            f"{percentile(seq_ttft, 0.5):>11.2f} / {percentile(seq_ttft, 0.95):<6.2f}"
        )
    print(
        f"(median of {rounds} rounds; × seq = median of the per-round ratios; sequential baseline "
        f"{SEQUENTIAL_SAMPLE} answers after each concurrent run; finish reasons {dict(finishes)})"
    )


def run_single(engine, pairs: int, max_tokens: int) -> None:
    """Short A B A B… runs: noise from other jobs comes and goes in seconds, so many short pairs."""
    prompt = [{"role": "user", "content": PROMPTS[0]}]
    rows = {"engine": [], "mlx-lm": []}
    ratios = []
    for pair in range(pairs):
        arms = ("engine", "mlx-lm") if pair % 2 == 0 else ("mlx-lm", "engine")
        result = {}
        for arm in arms:
            result[arm] = (engine_stream if arm == "engine" else bare_stream)(engine, prompt, max_tokens)
            rows[arm].append(result[arm])
        ratios.append(result["engine"][1] / result["mlx-lm"][1])
    print(f"\n{'single stream':<14} {'decode tok/s':>13} {'tokens':>7}")
    for arm, results in rows.items():
        print(
            f"{arm:<14} {statistics.median(r[1] for r in results):>13.2f} "
            f"{statistics.median(r[0] for r in results):>7.0f}"
        )
    print(
        f"engine / mlx-lm: median {statistics.median(ratios):.3f} (per pair: "
        f"{' '.join(f'{r:.2f}' for r in ratios)}; {pairs} alternating pairs of {max_tokens} tokens)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=24, help="engine/mlx-lm single-stream pairs")
    parser.add_argument("--single-tokens", type=int, default=16, help="max_tokens of each single-stream run")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--chats", default="1,4,8,16")
    parser.add_argument("--max-batch", type=int, default=None, help="Engine max_batch (default: the bot's)")
    args = parser.parse_args()
    chats = sorted(int(n) for n in args.chats.split(","))
    if max(chats) > len(PROMPTS):
        parser.error(f"at most {len(PROMPTS)} chats")

    import inference  # noqa: F401  (the optimized BLAS before mlx)
    from inference.engine import Engine
    from inference.settings import InferenceSettings

    home = Path(tempfile.mkdtemp(prefix="farense-bench-serving-"))
    os.environ["FARENSE_HOME"] = str(home)
    settings = InferenceSettings.load()
    engine = Engine(settings, adapter=None, **({"max_batch": args.max_batch} if args.max_batch else {}))
    try:
        info = engine.info
        print(
            f"model {info.model_id} on {info.device}, weights {info.dtype}, BLAS {info.blas}; "
            f"max_batch {engine.max_batch}; temperature {settings.temperature}, top_p {settings.top_p}, "
            f"repetition penalty {settings.repetition_penalty}; max_tokens {args.max_tokens}"
        )
        concurrent(engine, max(chats), 8)  # warm-up: first batched shapes, imports
        sequential(engine, 0, 1, 8)
        bare_stream(engine, [{"role": "user", "content": PROMPTS[0]}], 8)
        print(f"\nconcurrent chats vs the same requests one by one ({args.rounds} rounds)")
        run_concurrency(engine, chats, args.rounds, args.max_tokens)
        run_single(engine, args.pairs, args.single_tokens)
        print(f"(load average {os.getloadavg()[0]:.1f} at the end: other jobs share the machine)")
    finally:
        engine.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
