"""Retrieval quality and speed, old rule against new: `python bench/retrieval.py [--sweep]`.

Two question sets: DEV (data/seed/retrieval_dev.jsonl, natural fan questions with the fact numbers
that answer them, plus out-of-domain ones; the new rule was tuned on it) and HELD-OUT (the eval
questions and data/seed/out_of_domain.jsonl, looked at once, never tuned on). For each it prints
recall@1/@3 EN and PT (a hit is an answering fact in either language), in-domain questions wrongly
declined (nothing retrieved), out-of-domain questions rejected, and ms/query p50/p95.

"old": FTS5 porter index, its bm25, floor 5.0 and half the best score (as first built).
"new": inference.grounding.FactIndex as it is now (Snowball prefix terms, coverage >= 0.5, bm25
b=0). --sweep prints the new rule's knobs on DEV only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
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
from inference import grounding, retrieval  # noqa: E402
from inference.grounding import FactIndex, detect_language  # noqa: E402

DEV_FILE = PACKAGE_SEED_DIR / "retrieval_dev.jsonl"
PORTER = "porter unicode61 remove_diacritics 2"


@dataclass(frozen=True)
class Question:
    lang: str
    text: str
    facts: frozenset[int]  # empty: out of domain, should retrieve nothing


def dev_questions() -> list[Question]:
    return [Question(record["lang"], record["question"], frozenset(record["facts"]))
            for record in map(json.loads, DEV_FILE.read_text(encoding="utf-8").splitlines())]


def held_out_questions() -> list[Question]:
    problems: list = []
    items = [Question(item.lang, item.question, frozenset({item.fact}))
             for item in load_eval(PACKAGE_SEED_DIR, problems)]
    return items + [Question(item.lang, item.question, frozenset())
                    for item in load_ood(PACKAGE_SEED_DIR, problems)]


def porter_copy(source: Path, folder: Path) -> Path:
    """The knowledge base with the first (porter) FTS index, for the old rule."""
    path = folder / "porter.db"
    db = sqlite3.connect(source)
    db.execute("VACUUM INTO ?", (str(path),))
    db.close()
    db = sqlite3.connect(path)
    db.executescript(f"""
        DROP TABLE facts_fts;
        CREATE VIRTUAL TABLE facts_fts USING fts5(text, content='facts', content_rowid='id',
                                                  tokenize='{PORTER}');
        INSERT INTO facts_fts (facts_fts) VALUES ('rebuild');""")
    db.close()
    return path


OLD_STOP_WORDS = frozenset("""
a about after all also an and any are as at be been before but by can could did do does done for
from had has have he her him his how i if in into is it its me my no not of on or our she so than
that the their them then there these they this those to us was we were what when where which who
whom whose why will with would you your tell give know please name many much ever
o os as um uma uns umas de do da dos das em no na nos nas ao aos pelo pela pelos pelas por para
com sem que quem qual quais quando onde como porque porque e ou mas se foi era sao e esta estao
ser ter tem tinha teve ha seu sua seus suas ele ela eles elas lhe isso isto este esta esse essa
me te nos voce nao ja quanto quantos quanta quantas diz diga sabes sabe conta qualquer algum alguma
""".split())


def old_terms(text: str) -> list[str]:
    terms: dict[str, None] = {}
    for word in retrieval.words(text):
        if word not in OLD_STOP_WORDS and (len(word) > 1 or word.isdigit()):
            terms.setdefault(word, None)
    return list(terms)[:24]


class OldIndex:
    """The first retrieval rule: OR of the words, FTS5 bm25, absolute floor 5.0 and relative 0.5."""

    SEARCH = ("SELECT f.fact, -bm25(facts_fts) FROM facts_fts JOIN facts f ON f.id = facts_fts.rowid"
              " WHERE facts_fts MATCH ? AND f.removed_at IS NULL ORDER BY bm25(facts_fts) LIMIT ?")

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)

    def search(self, question: str, k: int = 3, lang: str | None = None) -> list[int]:
        terms = old_terms(question)
        if not terms:
            return []
        rows = self.db.execute(self.SEARCH, (" OR ".join(f'"{t}"' for t in terms), 4 * k)).fetchall()
        found: list[int] = []
        for number, score in rows:
            if score < max(5.0, 0.5 * rows[0][1]):
                break
            if number not in found:
                found.append(number)
            if len(found) == k:
                break
        return found


def facts_of(index, question: str) -> list[int]:
    found = index.search(question, k=3, lang=detect_language(question))
    return [item if isinstance(item, int) else item.fact for item in found]


def measure(index, questions: list[Question]) -> dict:
    row: dict = {}
    for lang in ("en", "pt"):
        asked = [q for q in questions if q.facts and q.lang == lang]
        found = [facts_of(index, q.text) for q in asked]
        row[f"{lang} r@1"] = sum(bool(f[:1]) and f[0] in q.facts for q, f in zip(asked, found)) / len(asked)
        row[f"{lang} r@3"] = sum(bool(q.facts & set(f)) for q, f in zip(asked, found)) / len(asked)
        row[f"{lang} declined"] = f"{sum(not f for f in found)}/{len(asked)}"
    ood = [q for q in questions if not q.facts]
    row["ood rejected"] = f"{sum(not facts_of(index, q.text) for q in ood)}/{len(ood)}"
    samples = []
    for _ in range(3):
        for q in questions:
            started = time.perf_counter()
            facts_of(index, q.text)
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    row["ms p50"] = f"{statistics.median(samples):.2f}"
    row["ms p95"] = f"{samples[int(len(samples) * 0.95)]:.2f}"
    return row


def table(rows: dict[str, dict]) -> str:
    columns = list(next(iter(rows.values())))
    lines = [" | ".join(["rule / set".ljust(14), *columns])]
    for name, row in rows.items():
        cells = [f"{value:.2f}" if isinstance(value, float) else str(value) for value in row.values()]
        lines.append(" | ".join([name.ljust(14), *(c.rjust(len(h)) for c, h in zip(cells, columns))]))
    return "\n".join(lines)


def sweep(index: FactIndex, dev: list[Question]) -> None:
    """The new rule's knobs over DEV only: the coverage floor (RETRIEVAL_MIN_SCORE) and bm25's b."""
    print("min_score  b   | EN r@1 r@3 declined | PT r@1 r@3 declined | OOD rejected")
    for coverage, b in itertools.product((0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7), (0.0, 0.3, 0.75)):
        index.min_score, retrieval.BM25_B = coverage, b
        r = measure(index, dev)
        print(f"{coverage:9.2f} {b:.2f} | {r['en r@1']:.2f} {r['en r@3']:.2f} {r['en declined']:>5}"
              f" | {r['pt r@1']:.2f} {r['pt r@3']:.2f} {r['pt declined']:>5} | {r['ood rejected']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="tune the new rule's knobs on DEV")
    args = parser.parse_args()
    dev, held_out = dev_questions(), held_out_questions()
    with tempfile.TemporaryDirectory() as folder:
        path = Home(Path(folder)).database
        Store(path).close()
        new = FactIndex(path, grounding.DEFAULT_MIN_SCORE)
        if args.sweep:
            sweep(new, dev)
            return 0
        old = OldIndex(porter_copy(path, Path(folder)))
        print(f"DEV: {sum(bool(q.facts) for q in dev)} in-domain + {sum(not q.facts for q in dev)}"
              f" out-of-domain; HELD-OUT: {sum(bool(q.facts) for q in held_out)} eval +"
              f" {sum(not q.facts for q in held_out)} out-of-domain")
        print(table({"old / dev": measure(old, dev), "new / dev": measure(new, dev),
                     "old / held-out": measure(old, held_out),
                     "new / held-out": measure(new, held_out)}))
        new.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
