"""Retrieval quality and speed on the DEV questions: `python bench/retrieval.py [--sweep]`.

DEV is what retrieval is tuned on: data/seed/retrieval_dev.jsonl (natural fan questions with the
fact numbers that answer them, plus out-of-domain ones), data/seed/dev.jsonl and
data/seed/ood_dev.jsonl when present. HELD-OUT (the eval questions and out_of_domain.jsonl) is
printed only with --held-out, which the lead runs once: never tune on it.

A question is asked as the bot asks it, through `build_grounded` with the default settings, and
judged on the facts its prompt holds (a hit is an answering fact, in either language):
r@1 (the first fact answers), r@k (one of the prompt's facts answers), facts/prompt (mean over the
in-domain questions that got any), in-domain questions declined (nothing retrieved), out-of-domain
questions rejected, and ms/query p50/p95 of `FactIndex.search` (wall clock, and CPU time, which
other work on a shared machine does not inflate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.home import Home  # noqa: E402
from data.seed import load_eval, load_ood  # noqa: E402
from data.settings import PACKAGE_SEED_DIR  # noqa: E402
from data.store import Store  # noqa: E402
from inference import grounding  # noqa: E402
from inference.grounding import FactIndex, build_grounded, detect_language  # noqa: E402
from inference.settings import InferenceSettings  # noqa: E402

DEV_FILES = ("retrieval_dev.jsonl", "dev.jsonl", "ood_dev.jsonl")


@dataclass(frozen=True)
class Question:
    lang: str
    text: str
    facts: frozenset[int]  # empty: out of domain, should retrieve nothing
    id: str = ""


def _answering(record: dict) -> frozenset[int]:
    if record.get("expected") == "decline":
        return frozenset()
    numbers = set(record.get("facts") or [])
    if record.get("fact") is not None:
        numbers.add(record["fact"])
    return frozenset(numbers)


def dev_questions(seed_dir: Path = PACKAGE_SEED_DIR) -> dict[str, list[Question]]:
    """Each DEV file present, by name."""
    sets = {}
    for name in DEV_FILES:
        path = seed_dir / name
        if path.exists():
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            sets[name] = [Question(r["lang"], r["question"], _answering(r), r.get("id", "")) for r in records]
    return sets


def held_out_questions() -> list[Question]:
    problems: list = []
    items = [
        Question(item.lang, item.question, frozenset({item.fact}), item.id)
        for item in load_eval(PACKAGE_SEED_DIR, problems)
    ]
    return items + [
        Question(item.lang, item.question, frozenset(), item.id) for item in load_ood(PACKAGE_SEED_DIR, problems)
    ]


def prompt_facts(index: FactIndex, settings, question: str) -> list[int | None]:
    found = build_grounded([{"role": "user", "content": question}], index, settings)
    return [fact.fact for fact in found.facts]


def measure(index: FactIndex, settings, questions: list[Question], misses: list[str] | None = None) -> dict:
    row: dict = {}
    shown = []
    for lang in ("en", "pt"):
        asked = [q for q in questions if q.facts and q.lang == lang]
        if not asked:
            row.update({f"{lang} r@1": "-", f"{lang} r@k": "-", f"{lang} declined": "-"})
            continue
        found = [prompt_facts(index, settings, q.text) for q in asked]
        shown += [len(f) for f in found if f]
        row[f"{lang} r@1"] = sum(bool(f) and f[0] in q.facts for q, f in zip(asked, found)) / max(len(asked), 1)
        row[f"{lang} r@k"] = sum(bool(q.facts & set(f)) for q, f in zip(asked, found)) / max(len(asked), 1)
        row[f"{lang} declined"] = f"{sum(not f for f in found)}/{len(asked)}"
        if misses is not None:
            misses += [
                f"  miss {q.id} {q.lang} {sorted(q.facts)} got {f}: {q.text}"
                for q, f in zip(asked, found)
                if not q.facts & set(f)
            ]
    row["facts/prompt"] = sum(shown) / len(shown) if shown else "-"
    ood = [q for q in questions if not q.facts]
    rejected = [not prompt_facts(index, settings, q.text) for q in ood]
    row["ood rejected"] = f"{sum(rejected)}/{len(ood)}" if ood else "-"
    if misses is not None:
        misses += [
            f"  ood  {q.id} {q.lang} got {prompt_facts(index, settings, q.text)}: {q.text}"
            for q, ok in zip(ood, rejected)
            if not ok
        ]
    samples, cpu = [], []
    for _ in range(3):
        for q in questions:
            started, started_cpu = time.perf_counter(), time.process_time()
            index.search(
                q.text, k=settings.retrieval_top_k, lang=detect_language(q.text), min_score=settings.retrieval_min_score
            )
            samples.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
    samples.sort()
    cpu.sort()
    row["ms p50"] = f"{statistics.median(samples):.2f}"
    row["ms p95"] = f"{samples[int(len(samples) * 0.95)]:.2f}"
    row["cpu ms p95"] = f"{cpu[int(len(cpu) * 0.95)]:.2f}"  # the wall clock also counts other load
    return row


def table(rows: dict[str, dict]) -> str:
    columns = list(next(iter(rows.values())))
    width = max(len(name) for name in rows)
    lines = [" | ".join(["set".ljust(width), *columns])]
    for name, row in rows.items():
        cells = [f"{value:.2f}" if isinstance(value, float) else str(value) for value in row.values()]
        lines.append(" | ".join([name.ljust(width), *(c.rjust(len(h)) for c, h in zip(cells, columns))]))
    return "\n".join(lines)


def sweep(index: FactIndex, settings, dev: list[Question]) -> None:
    """The relevance knobs over DEV only: the coverage floor (RETRIEVAL_MIN_SCORE), the bm25
    evidence that may stand in for it (MIN_EVIDENCE) and the relative cut (RELATIVE_MIN_SCORE)."""
    defaults = grounding.MIN_EVIDENCE, grounding.RELATIVE_MIN_SCORE
    print("min_score evidence rel | EN r@1 r@k declined | PT r@1 r@k declined | facts | OOD rejected")
    for coverage, evidence, relative in [
        *((c, e, defaults[1]) for c in (0.4, 0.45, 0.5, 0.55, 0.6) for e in (4.0, 5.0, 6.0, 8.0, float("inf"))),
        *((settings.retrieval_min_score, defaults[0], r) for r in (0.5, 0.6, 0.8)),
    ]:
        grounding.MIN_EVIDENCE, grounding.RELATIVE_MIN_SCORE = evidence, relative
        r = measure(index, settings.model_copy(update={"retrieval_min_score": coverage}), dev)
        print(
            f"{coverage:9.2f} {evidence:8.1f} {relative:.1f} | {r['en r@1']:.2f} {r['en r@k']:.2f}"
            f" {r['en declined']:>7} | {r['pt r@1']:.2f} {r['pt r@k']:.2f}"
            f" {r['pt declined']:>7} | {r['facts/prompt']:.2f} | {r['ood rejected']}",
            flush=True,
        )
    grounding.MIN_EVIDENCE, grounding.RELATIVE_MIN_SCORE = defaults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="tune the rule's knobs on DEV")
    parser.add_argument("--misses", action="store_true", help="list DEV misses and OOD retrieved")
    parser.add_argument(
        "--held-out", action="store_true", help="also measure the held-out set (the lead, once; never tune on it)"
    )
    args = parser.parse_args()
    dev_sets = dev_questions()
    dev = [q for questions in dev_sets.values() for q in questions]
    with tempfile.TemporaryDirectory() as folder:
        path = Home(Path(folder)).database
        Store(path).close()
        index = FactIndex(path)
        settings = InferenceSettings(database_path=path)
        if args.sweep:
            sweep(index, settings, dev)
            return 0
        print(
            "DEV: "
            + ", ".join(
                f"{name} {sum(bool(q.facts) for q in qs)} in-domain + {sum(not q.facts for q in qs)} out-of-domain"
                for name, qs in dev_sets.items()
            )
            + f"; top_k {settings.retrieval_top_k}"
        )
        rows = {f"dev {name}": measure(index, settings, qs) for name, qs in dev_sets.items()}
        if len(dev_sets) > 1:
            rows["dev all"] = measure(index, settings, dev)
        if args.held_out:
            rows["HELD-OUT"] = measure(index, settings, held_out_questions())
        print(table(rows))
        if args.misses:
            misses: list[str] = []
            measure(index, settings, dev, misses)
            print("\n".join(misses))
        index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
