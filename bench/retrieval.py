"""Retrieval quality and speed on the held-out eval questions: `python bench/retrieval.py`.

For each variant (FTS5 tokenizer, query building) it prints recall@1 and recall@3 for EN and PT
(a hit is the asked fact in either language; "same" also needs the question's language), ms per
query p50/p95, and how many of the out-of-domain questions retrieve nothing, over a sweep of
RETRIEVAL_MIN_SCORE. Tuning on these questions is kept to the threshold: they are held out.
"""

from __future__ import annotations

import argparse
import statistics
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.seed import load_eval, load_ood  # noqa: E402
from data.settings import PACKAGE_SEED_DIR  # noqa: E402
from data.store import Store  # noqa: E402
from inference import grounding  # noqa: E402
from inference.grounding import FactIndex, detect_language  # noqa: E402
from inference.settings import RETRIEVAL_MIN_SCORE  # noqa: E402

TOKENIZERS = {"unicode61": "unicode61 remove_diacritics 2",
              "porter": "porter unicode61 remove_diacritics 2"}
THRESHOLDS = (0.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 8.0)


def build_db(folder: Path, tokenizer: str) -> Path:
    """A seeded store whose FTS index uses `tokenizer` (the schema's own one when unchanged)."""
    path = folder / f"{tokenizer.split()[0]}.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.executescript(f"""
        DROP TABLE facts_fts;
        CREATE VIRTUAL TABLE facts_fts USING fts5(text, content='facts', content_rowid='id',
                                                  tokenize='{tokenizer}');
        INSERT INTO facts_fts (facts_fts) VALUES ('rebuild');""")
    db.close()
    return path


def evaluate(index: FactIndex, items, ood, threshold: float) -> dict:
    result = {}
    for lang in ("en", "pt"):
        asked = [item for item in items if item.lang == lang]
        hits = {"r1": 0, "r3": 0, "same1": 0, "same3": 0, "none": 0}
        for item in asked:
            facts = index.search(item.question, k=3, lang=detect_language(item.question),
                                 min_score=threshold)
            numbers = [fact.fact for fact in facts]
            same = [fact.fact for fact in facts if fact.lang == item.lang]
            hits["r1"] += numbers[:1] == [item.fact]
            hits["r3"] += item.fact in numbers
            hits["same1"] += same[:1] == [item.fact]
            hits["same3"] += item.fact in same
            hits["none"] += not facts
        result[lang] = {name: count / len(asked) for name, count in hits.items()}
        result[lang]["n"] = len(asked)
    result["ood_empty"] = sum(not index.search(item.question, k=3, min_score=threshold)
                              for item in ood)
    return result


def timing(index: FactIndex, questions: list[str]) -> tuple[float, float]:
    samples = []
    for _ in range(3):
        for question in questions:
            started = time.perf_counter()
            index.search(question, k=3, lang=detect_language(question))
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    problems: list = []
    items, ood = load_eval(PACKAGE_SEED_DIR, problems), load_ood(PACKAGE_SEED_DIR, problems)
    language_ok = sum(detect_language(item.question) == item.lang for item in [*items, *ood])
    print(f"eval questions: {len(items)}, out-of-domain: {len(ood)}; detect_language right on"
          f" {language_ok}/{len(items) + len(ood)}")
    stop_words = grounding.STOP_WORDS
    with tempfile.TemporaryDirectory() as folder:
        for name, tokenizer in TOKENIZERS.items():
            index = FactIndex(build_db(Path(folder), tokenizer))
            for query in ("all words", "no generic words"):
                grounding.STOP_WORDS = (stop_words if query == "all words"
                                        else stop_words | grounding.GENERIC_TERMS)
                p50, p95 = timing(index, [item.question for item in [*items, *ood]])
                print(f"\n== tokenizer {name}, query: {query}; {p50:.2f} ms/query p50,"
                      f" {p95:.2f} p95")
                print("min_score | EN r@1 r@3 same@3 none | PT r@1 r@3 same@3 none | OOD empty")
                for threshold in THRESHOLDS:
                    r = evaluate(index, items, ood, threshold)
                    mark = " <- default" if threshold == RETRIEVAL_MIN_SCORE else ""
                    print(f"{threshold:9.1f} | " + " | ".join(
                        f"{r[lang]['r1']:.2f} {r[lang]['r3']:.2f} {r[lang]['same3']:.2f}"
                        f" {r[lang]['none']:.2f}" for lang in ("en", "pt"))
                        + f" | {r['ood_empty']}/{len(ood)}{mark}")
            index.close()
        grounding.STOP_WORDS = stop_words
    return 0


if __name__ == "__main__":
    sys.exit(main())
