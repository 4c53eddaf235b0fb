"""Check the dev, traffic, multi-turn and out-of-domain sets against the knowledge base.

Run from the repository root:  python scripts/check_eval_sets.py [seed_dir]

For every file that exists it checks: one JSON object per line, ids unique (within and across
the files), the language, required fields, that every referenced fact is in the knowledge base
(so never one of the uncertain facts left out of it), and that every key-fact group is found by
`data.scorer.contains` in the text of the item's own fact in the item's language, so the fact
itself, given as an answer, passes, and that no key fact is already in the question (an answer
that only repeats the question must not pass). It also reports questions repeated across the files.
Exits 1 when there is any problem.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.scorer import contains  # noqa: E402
from data.text import normalise  # noqa: E402

LANGS = ("en", "pt")
UNCERTAIN = {8, 34, 82, 86, 119}
FACT_FILES = ("dev.jsonl", "traffic.jsonl")
OOD_FILES = ("ood_dev.jsonl", "out_of_domain.jsonl")
MULTITURN = "multiturn.jsonl"


def load_facts(knowledge: Path) -> dict[tuple[int, str], str]:
    texts = {}
    for lang in LANGS:
        for line in (knowledge / f"facts.{lang}.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts[(record["fact"], lang)] = record["text"]
    return texts


def read(path: Path, problems: list[str]) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{path.name}:{number}: not JSON ({error})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{path.name}:{number}: not an object")
            continue
        rows.append((number, record))
    return rows


def is_groups(groups: object) -> bool:
    return (
        isinstance(groups, list)
        and bool(groups)
        and all(isinstance(g, list) and g and all(isinstance(a, str) and a.strip() for a in g) for g in groups)
    )


def check_answer(
    where: str, record: dict, fact: object, lang: str, texts: dict[tuple[int, str], str], problems: list[str]
) -> None:
    """An answerable question: facts exist, and the own fact's text states every key fact."""
    facts = record.get("facts")
    if not (isinstance(facts, list) and facts and all(isinstance(f, int) for f in facts)):
        problems.append(f"{where}: 'facts' should be a non-empty list of fact numbers")
        return
    for number in facts:
        if number in UNCERTAIN:
            problems.append(f"{where}: fact {number} is an uncertain fact, not in the knowledge base")
        elif (number, lang) not in texts:
            problems.append(f"{where}: fact {number} is not in the {lang} knowledge base")
    if fact is not None and fact not in facts:
        problems.append(f"{where}: 'fact' {fact} is not among 'facts' {facts}")
    groups = record.get("key_facts")
    if not is_groups(groups):
        problems.append(f"{where}: 'key_facts' should be a non-empty list of non-empty lists of strings")
        return
    own = fact if fact is not None else facts[0]
    text = texts.get((own, lang))
    if text is None:
        return
    question = record.get("question", "")
    for group in groups:
        if not any(contains(text, alternative) for alternative in group):
            problems.append(f"{where}: key-fact group {group} not found in fact {own} ({lang})")
        echoed = [alternative for alternative in group if contains(question, alternative)]
        if echoed:
            problems.append(f"{where}: key fact(s) {echoed} already in the question, an echo would pass")


def main(seed_dir: Path) -> int:
    texts = load_facts(ROOT / "data" / "knowledge")
    problems: list[str] = []
    ids: dict[str, str] = {}
    questions: dict[str, str] = {}
    repeats = 0
    summary = []

    def see(where: str, id_: object, question: object, lang: object) -> bool:
        nonlocal repeats
        if not isinstance(id_, str) or not id_:
            problems.append(f"{where}: missing 'id'")
            return False
        if id_ in ids:
            problems.append(f"{where}: id {id_!r} already used at {ids[id_]}")
        ids[id_] = where
        if lang not in LANGS:
            problems.append(f"{where}: 'lang' should be one of {LANGS}, got {lang!r}")
            return False
        if not isinstance(question, str) or not question.strip():
            problems.append(f"{where}: missing 'question'")
            return False
        key = normalise(question)
        if key in questions and not id_.startswith("mt-"):
            repeats += 1
            problems.append(f"{where}: question repeats {questions[key]}")
        questions.setdefault(key, where)
        return True

    for name in FACT_FILES:
        path = seed_dir / name
        if not path.exists():
            continue
        rows = read(path, problems)
        langs = Counter()
        covered = {lang: set() for lang in LANGS}
        for number, record in rows:
            where = f"{name}:{number}"
            if not see(where, record.get("id"), record.get("question"), record.get("lang")):
                continue
            fact = record.get("fact")
            if not isinstance(fact, int):
                problems.append(f"{where}: 'fact' should be a fact number")
                continue
            langs[record["lang"]] += 1
            covered[record["lang"]].add(fact)
            check_answer(where, record, fact, record["lang"], texts, problems)
        all_facts = {fact for fact, _ in texts}
        missing = {lang: sorted(all_facts - covered[lang]) for lang in LANGS}
        summary.append(
            f"{name}: {len(rows)} items ({', '.join(f'{k} {v}' for k, v in sorted(langs.items()))});"
            f" facts covered en {len(covered['en'])}/{len(all_facts)},"
            f" pt {len(covered['pt'])}/{len(all_facts)}"
        )
        if name == "dev.jsonl":
            for lang in LANGS:
                if missing[lang]:
                    problems.append(f"{name}: no {lang} question for facts {missing[lang]}")

    for name in OOD_FILES:
        path = seed_dir / name
        if not path.exists():
            continue
        rows = read(path, problems)
        langs = Counter()
        for number, record in rows:
            where = f"{name}:{number}"
            if not see(where, record.get("id"), record.get("question"), record.get("lang")):
                continue
            langs[record["lang"]] += 1
            if record.get("expected") != "decline":
                problems.append(f"{where}: 'expected' should be 'decline'")
            markers = record.get("decline_markers")
            if not (isinstance(markers, list) and markers and all(isinstance(m, str) and m for m in markers)):
                problems.append(f"{where}: 'decline_markers' should be a non-empty list of strings")
        summary.append(f"{name}: {len(rows)} probes ({', '.join(f'{k} {v}' for k, v in sorted(langs.items()))})")

    path = seed_dir / MULTITURN
    if path.exists():
        rows = read(path, problems)
        splits, langs, turns, expected = Counter(), Counter(), Counter(), Counter()
        for number, record in rows:
            where = f"{MULTITURN}:{number}"
            id_, lang = record.get("id"), record.get("lang")
            if not see(where, id_, "conversation " + str(id_), lang):
                continue
            splits[record.get("split")] += 1
            langs[lang] += 1
            if record.get("split") not in ("dev", "heldout"):
                problems.append(f"{where}: 'split' should be 'dev' or 'heldout'")
            conversation = record.get("turns")
            if not (isinstance(conversation, list) and 2 <= len(conversation) <= 4):
                problems.append(f"{where}: 'turns' should be a list of 2-4 turns")
                continue
            turns[len(conversation)] += 1
            for index, turn in enumerate(conversation, 1):
                at = f"{where} turn {index}"
                if not isinstance(turn, dict) or not isinstance(turn.get("question"), str):
                    problems.append(f"{at}: a turn needs a 'question'")
                    continue
                kind = turn.get("expected")
                expected[kind] += 1
                if kind == "answer":
                    facts = turn.get("facts")
                    fact = facts[0] if isinstance(facts, list) and facts else None
                    check_answer(at, turn, fact, lang, texts, problems)
                elif kind != "decline":
                    problems.append(f"{at}: 'expected' should be 'answer' or 'decline'")
        summary.append(
            f"{MULTITURN}: {len(rows)} conversations (splits {dict(splits)}, langs {dict(langs)},"
            f" turns per conversation {dict(sorted(turns.items()))}, turns expected {dict(expected)})"
        )

    print("\n".join(summary))
    print(f"ids: {len(ids)} unique checked; questions repeated across/within files: {repeats}")
    if problems:
        print(f"{len(problems)} problem(s):")
        print("\n".join(problems))
        return 1
    print("OK: no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "seed"))
