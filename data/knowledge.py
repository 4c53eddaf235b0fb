"""The knowledge base: facts with their sources, which the bot retrieves to ground its answers.

Facts live in the store's `facts` table (schema in migrations.py); an FTS5 index kept by triggers
makes every add, amendment or removal searchable as soon as it commits. The seed facts are files in
data/knowledge/ (one JSON object per line), imported idempotently whenever a store opens read-write
(`Store.seed_knowledge`, right after the migrations), so a fresh
machine answers from day one. An admin's amendment or removal of a seed fact is never undone by a
later import. Every change of a fact's words is a new revision: `facts` holds the current one
(all retrieval reads), `fact_revisions` all of them, so an amended fact can be restored. The
retrieval lexicon is data too: synonyms.*.jsonl (words fans use for what the facts say otherwise)
and other_subjects.jsonl (names of other clubs and competitions), copied into their tables at the
same time, and so are the seed QA questions each seed fact answers (`fact_questions`), which let a
fan's question find a fact by the way fans ask for it. Retrieval for answering lives in
inference/grounding.py, which reads this schema.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .jsonl import Problem, field_problem, read_jsonl, report
from .seed import load_qa
from .settings import PACKAGE_SEED_DIR
from .text import strip_accents

if TYPE_CHECKING:
    from .store import Store

PACKAGE_KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"
SEED_GLOB = "facts.*.jsonl"
SYNONYMS_GLOB = "synonyms.*.jsonl"
OTHER_SUBJECTS_FILE = "other_subjects.jsonl"
LANGS = ("en", "pt")
MAX_FACT_CHARS = 1000
ADMIN_SOURCE = "Farense bot admin"
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class FactRow:
    id: int
    fact: int | None  # the seed fact number, shared by the EN and PT versions; None for admin facts
    lang: str
    text: str
    source: str
    url: str | None
    origin: str  # "seed" or "admin"
    author_id: int | None  # the admin who added or last amended it
    created_at: str
    updated_at: str
    removed_at: str | None
    revision: int  # of the current text; 1 when added
    source_message_id: int | None  # the logged answer the current revision corrected, if any


@dataclass(frozen=True)
class FactRevision:
    fact_id: int
    revision: int
    text: str
    source: str
    url: str | None
    author_id: int | None  # None: the seed files
    source_message_id: int | None
    created_at: str


@dataclass(frozen=True)
class SeedFact:
    fact: int
    lang: str
    text: str
    source: str
    url: str | None


_COLUMNS = ", ".join(f"facts.{field.name}" for field in fields(FactRow))
_REVISION_COLUMNS = ", ".join(field.name for field in fields(FactRevision))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def load_seed_facts(folder: Path, problems: list[Problem]) -> list[SeedFact]:
    """The seed facts of every facts.*.jsonl in `folder`; bad lines go to `problems` as file:line."""
    paths = sorted(Path(folder).glob(SEED_GLOB))
    if not paths:
        report(problems, folder, 0, f"no {SEED_GLOB} file")
    facts: dict[tuple[int, str], SeedFact] = {}
    places: dict[tuple[int, str], str] = {}
    for path in paths:
        for line, record in read_jsonl(path, problems):
            reason = field_problem(
                record, {"fact": int, "lang": str, "text": str, "source": str, "url": (str, type(None))}
            ) or _fact_problem(record["text"], record["lang"])
            key = (record.get("fact"), record.get("lang"))
            if reason is None and key in facts:
                reason = f"fact {key[0]} in {key[1]!r} already given at {places[key]}"
            if reason:
                report(problems, path, line, reason)
                continue
            facts[key] = SeedFact(
                record["fact"], record["lang"], record["text"].strip(), record["source"].strip(), record.get("url")
            )
            places[key] = f"{path}:{line}"
    return list(facts.values())


def load_synonyms(folder: Path, problems: list[Problem]) -> set[tuple[str, str, str]]:
    """The retrieval lexicon of every synonyms.*.jsonl in `folder` as (lang, word, means) rows.

    A line is {"lang": "pt", "words": ["nasceu", "criado"], "means": ["fundado"]}: each of `words`
    (what fans say) stands for each of `means` (what the facts say). Words are single words, stored
    folded (lower case, no accents), as the retriever compares them.
    """
    rows: set[tuple[str, str, str]] = set()
    for path in sorted(Path(folder).glob(SYNONYMS_GLOB)):
        for line, record in read_jsonl(path, problems):
            reason = field_problem(record, {"lang": str, "words": list, "means": list})
            if reason is None and record["lang"] not in LANGS:
                reason = f"'lang' should be one of {', '.join(LANGS)}, got {record['lang']!r}"
            words = [
                _lexicon_word(word)
                for word in (record.get("words"), record.get("means"))
                for word in (word if isinstance(word, list) else [])
            ]
            if reason is None and (not record["words"] or not record["means"] or None in words):
                reason = "'words' and 'means' should be non-empty lists of single words"
            if reason:
                report(problems, path, line, reason)
                continue
            rows.update(
                (record["lang"], _lexicon_word(word), _lexicon_word(means))
                for word in record["words"]
                for means in record["means"]
                if _lexicon_word(word) != _lexicon_word(means)
            )
    return rows


def _lexicon_word(word: object) -> str | None:
    """The folded form of a single word, None if `word` is not one."""
    if not isinstance(word, str):
        return None
    found = _WORDS.findall(strip_accents(word).casefold().replace("_", " "))
    return found[0] if len(found) == 1 else None


def seed_synonyms(store: Store, folder: Path = PACKAGE_KNOWLEDGE_DIR, problems: list[Problem] | None = None) -> bool:
    """Make the store's lexicon the files' (when `folder` has any); True if it changed."""
    if not any(Path(folder).glob(SYNONYMS_GLOB)):
        return False
    rows = load_synonyms(folder, problems if problems is not None else [])

    def work(db: sqlite3.Connection) -> bool:
        if set(db.execute("SELECT lang, word, means FROM synonyms")) == rows:
            return False
        db.execute("DELETE FROM synonyms")
        db.executemany("INSERT INTO synonyms (lang, word, means) VALUES (?, ?, ?)", sorted(rows))
        return True

    return store.write(work)


def load_other_subjects(folder: Path, problems: list[Problem]) -> set[str]:
    """Words naming another club or competition, folded: lines {"words": [...], "what": "..."}."""
    words: set[str] = set()
    path = Path(folder) / OTHER_SUBJECTS_FILE
    for line, record in read_jsonl(path, problems):
        reason = field_problem(record, {"words": list})
        found = [_lexicon_word(word) for word in record.get("words") or []]
        if reason is None and (not found or None in found):
            reason = "'words' should be a non-empty list of single words"
        if reason:
            report(problems, path, line, reason)
            continue
        words.update(found)
    return words


def seed_other_subjects(
    store: Store, folder: Path = PACKAGE_KNOWLEDGE_DIR, problems: list[Problem] | None = None
) -> bool:
    """Make the store's other subjects the file's (when `folder` has it); True if they changed."""
    if not (Path(folder) / OTHER_SUBJECTS_FILE).is_file():
        return False
    words = load_other_subjects(folder, problems if problems is not None else [])

    def work(db: sqlite3.Connection) -> bool:
        if {row[0] for row in db.execute("SELECT word FROM other_subjects")} == words:
            return False
        db.execute("DELETE FROM other_subjects")
        db.executemany("INSERT INTO other_subjects (word) VALUES (?)", [(w,) for w in sorted(words)])
        return True

    return store.write(work)


def load_fact_questions(seed_dir: Path, problems: list[Problem]) -> set[tuple[int, str, str]]:
    """The seed QA questions about a fact, as (fact, lang, question) rows; decline pairs have none."""
    return {(pair.fact, pair.lang, pair.question) for pair in load_qa(seed_dir, problems) if pair.fact is not None}


def seed_fact_questions(store: Store, seed_dir: Path = PACKAGE_SEED_DIR, problems: list[Problem] | None = None) -> bool:
    """Replace the retrieval's fact questions with the seed QA's; returns whether they changed."""
    rows = load_fact_questions(seed_dir, problems if problems is not None else [])

    def work(db: sqlite3.Connection) -> bool:
        if set(db.execute("SELECT fact, lang, question FROM fact_questions")) == rows:
            return False
        db.execute("DELETE FROM fact_questions")
        db.executemany("INSERT INTO fact_questions (fact, lang, question) VALUES (?, ?, ?)", sorted(rows))
        return True

    return store.write(work)


def seed_knowledge(
    store: Store,
    folder: Path = PACKAGE_KNOWLEDGE_DIR,
    problems: list[Problem] | None = None,
    seed_dir: Path = PACKAGE_SEED_DIR,
) -> int:
    """Bring the seed facts, the lexicon and the fact questions into the store; returns how many
    fact rows were added or updated.

    Idempotent: unchanged facts are left alone, edited seed files update their facts, and a fact an
    admin amended or removed keeps the admin's version.
    """
    seed_synonyms(store, folder, problems)
    seed_other_subjects(store, folder, problems)
    seed_fact_questions(store, seed_dir, problems)
    seed = load_seed_facts(folder, problems if problems is not None else [])
    if not seed:
        return 0

    def work(db: sqlite3.Connection) -> int:
        current = {
            (row[0], row[1]): row[2:]
            for row in db.execute(
                "SELECT fact, lang, text, source, url, author_id, removed_at FROM facts WHERE origin = 'seed'"
            )
        }
        now, changed = _now(), 0
        for item in seed:
            existing = current.get((item.fact, item.lang))
            if existing is None:
                cursor = db.execute(
                    "INSERT INTO facts (fact, lang, text, source, url, origin, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, 'seed', ?, ?)",
                    (item.fact, item.lang, item.text, item.source, item.url, now, now),
                )
                _keep_revision(db, cursor.lastrowid, 1, item.text, item.source, item.url, None, None, now)
                changed += 1
            elif existing[3] is None and existing[4] is None and existing[:3] != (item.text, item.source, item.url):
                fact_id, revision = db.execute(
                    "SELECT id, revision + 1 FROM facts WHERE origin = 'seed' AND fact = ? AND lang = ?",
                    (item.fact, item.lang),
                ).fetchone()
                db.execute(
                    "UPDATE facts SET text = ?, source = ?, url = ?, updated_at = ?, revision = ?,"
                    " source_message_id = NULL WHERE id = ?",
                    (item.text, item.source, item.url, now, revision, fact_id),
                )
                _keep_revision(db, fact_id, revision, item.text, item.source, item.url, None, None, now)
                changed += 1
        return changed

    return store.write(work)


def add_fact(
    store: Store,
    text: str,
    lang: str,
    source: str = ADMIN_SOURCE,
    url: str | None = None,
    author_id: int | None = None,
    source_message_id: int | None = None,
) -> int:
    """Add an admin's fact (revision 1); returns its id. It is retrievable as soon as this returns.
    `source_message_id`: the logged answer it corrects, if it came from a correction."""
    text, source = _clean(text), _clean(source)
    reason = _fact_problem(text, lang) or (None if source else "a fact needs a source")
    if reason:
        raise ValueError(reason)
    now = _now()

    def work(db: sqlite3.Connection) -> int:
        cursor = db.execute(
            "INSERT INTO facts (lang, text, source, url, origin, author_id, created_at, updated_at,"
            " source_message_id) VALUES (?, ?, ?, ?, 'admin', ?, ?, ?, ?)",
            (lang, text, source, url, author_id, now, now, source_message_id),
        )
        _keep_revision(db, cursor.lastrowid, 1, text, source, url, author_id, source_message_id, now)
        return int(cursor.lastrowid)

    return store.write(work)


def amend_fact(
    store: Store,
    fact_id: int,
    text: str,
    author_id: int | None,
    source: str = ADMIN_SOURCE,
    url: str | None = None,
    source_message_id: int | None = None,
) -> int:
    """Give a live fact new words as a new revision (the old ones are kept); returns its number.
    The source becomes the admin's, since the words now are theirs."""
    text = _clean(text)
    current = get_fact(store, fact_id)
    if current is None or current.removed_at is not None:
        raise ValueError(f"fact {fact_id} does not exist or was removed")
    reason = _fact_problem(text, current.lang)
    if reason:
        raise ValueError(reason)
    return _revise(store, fact_id, text, _clean(source) or ADMIN_SOURCE, url, author_id, source_message_id)


def fact_history(store: Store, fact_id: int) -> list[FactRevision]:
    """Every revision of a fact, oldest first (empty if there is no such fact)."""
    rows = store.read(f"SELECT {_REVISION_COLUMNS} FROM fact_revisions WHERE fact_id = ? ORDER BY revision", (fact_id,))
    return [FactRevision(*row) for row in rows]


def restore_fact(store: Store, fact_id: int, revision: int, author_id: int | None) -> int:
    """Put an earlier revision's words back, as a new revision (live again if it was removed);
    returns the new revision's number."""
    old = next((item for item in fact_history(store, fact_id) if item.revision == revision), None)
    if old is None:
        raise ValueError(f"fact {fact_id} has no revision {revision}")
    return _revise(store, fact_id, old.text, old.source, old.url, author_id, old.source_message_id)


def _revise(
    store: Store,
    fact_id: int,
    text: str,
    source: str,
    url: str | None,
    author_id: int | None,
    source_message_id: int | None,
) -> int:
    now = _now()

    def work(db: sqlite3.Connection) -> int:
        revision = db.execute("SELECT revision + 1 FROM facts WHERE id = ?", (fact_id,)).fetchone()[0]
        db.execute(
            "UPDATE facts SET text = ?, source = ?, url = ?, author_id = ?, updated_at = ?,"
            " removed_at = NULL, revision = ?, source_message_id = ? WHERE id = ?",
            (text, source, url, author_id, now, revision, source_message_id, fact_id),
        )
        _keep_revision(db, fact_id, revision, text, source, url, author_id, source_message_id, now)
        return revision

    return store.write(work)


def _keep_revision(
    db: sqlite3.Connection,
    fact_id: int,
    revision: int,
    text: str,
    source: str,
    url: str | None,
    author_id: int | None,
    source_message_id: int | None,
    at: str,
) -> None:
    db.execute(
        f"INSERT INTO fact_revisions ({_REVISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (fact_id, revision, text, source, url, author_id, source_message_id, at),
    )


def remove_fact(store: Store, fact_id: int, author_id: int | None) -> bool:
    """Take a fact out of retrieval (kept for the record); False if there was no live fact."""
    now = _now()
    cursor = store.write(
        lambda db: db.execute(
            "UPDATE facts SET removed_at = ?, updated_at = ?, author_id = ? WHERE id = ? AND removed_at IS NULL",
            (now, now, author_id, fact_id),
        )
    )
    return cursor.rowcount == 1


def get_fact(store: Store, fact_id: int) -> FactRow | None:
    rows = store.read(f"SELECT {_COLUMNS} FROM facts WHERE id = ?", (fact_id,))
    return FactRow(*rows[0]) if rows else None


def list_facts(store: Store, query: str | None = None, limit: int = 20, include_removed: bool = False) -> list[FactRow]:
    """Facts for an admin: those with all of `query`'s words, best first; the newest without it."""
    live = "" if include_removed else " AND facts.removed_at IS NULL"
    words = _WORDS.findall(strip_accents(query or "").lower())[:32]
    if query is None or not query.strip():
        rows = store.read(
            f"SELECT {_COLUMNS} FROM facts WHERE 1{live} ORDER BY facts.updated_at DESC, facts.id DESC LIMIT ?",
            (limit,),
        )
    elif not words:
        return []
    else:
        match = " ".join(f'"{word}"' for word in words)  # every word, as an admin expects
        rows = store.read(
            f"SELECT {_COLUMNS} FROM facts_fts JOIN facts ON facts.id = facts_fts.rowid"
            f" WHERE facts_fts MATCH ?{live} ORDER BY bm25(facts_fts) LIMIT ?",
            (match, limit),
        )
    return [FactRow(*row) for row in rows]


def knowledge_hash(store: Store) -> str:
    """sha256 over the live facts' content and revision (not their ids), the lexicon and the fact
    questions, which decide what is retrieved, so equal knowledge hashes equally and any amendment changes it."""
    rows = store.read("SELECT lang, text, source, url, revision FROM facts WHERE removed_at IS NULL")
    return _hash_lines([json.dumps(list(row), ensure_ascii=False) for row in rows], store)


def shipped_knowledge_hash(store: Store) -> str:
    """sha256 over the knowledge as the project's files bring it: each seed fact's latest revision
    from the files, the lexicon and the fact questions; the admins' additions and amendments are
    left out.

    An admin's /correct changes the knowledge base every time it is used, and comes with its own
    training example; a new release of the seed facts or of the lexicon changes what every prompt
    shows, which is what makes a warm-started adapter out of date (training/lifecycle/warmstart.py).
    """
    rows = store.read(
        "SELECT f.fact, f.lang, r.text, r.source, r.url FROM facts f JOIN fact_revisions r ON r.fact_id = f.id"
        " WHERE f.origin = 'seed' AND r.author_id IS NULL AND r.revision ="
        " (SELECT MAX(revision) FROM fact_revisions WHERE fact_id = f.id AND author_id IS NULL)"
    )
    return _hash_lines([json.dumps(list(row), ensure_ascii=False) for row in rows], store)


def _hash_lines(fact_lines: list[str], store: Store) -> str:
    """sha256 over fact lines, the lexicon and the fact questions, each sorted, so row order never
    matters."""
    lines = sorted(fact_lines)
    lines += sorted(
        json.dumps(["synonym", *row], ensure_ascii=False)
        for row in store.read("SELECT lang, word, means FROM synonyms")
    )
    lines += sorted(
        json.dumps(["other", *row], ensure_ascii=False) for row in store.read("SELECT word FROM other_subjects")
    )
    lines += sorted(
        json.dumps(["question", *row], ensure_ascii=False)
        for row in store.read("SELECT fact, lang, question FROM fact_questions")
    )
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def knowledge_stats(store: Store) -> dict:
    """Counts of live facts per origin and language, and of removed ones, with the hash."""
    rows = store.read("SELECT origin, lang, removed_at IS NOT NULL, COUNT(*) FROM facts GROUP BY 1, 2, 3")
    live = {f"{origin}/{lang}": count for origin, lang, removed, count in rows if not removed}
    return {
        "live": sum(live.values()),
        "by_origin_lang": dict(sorted(live.items())),
        "removed": sum(count for *_, removed, count in rows if removed),
        "knowledge_hash": knowledge_hash(store),
    }


def _clean(text: object) -> str:
    return text.strip() if isinstance(text, str) else ""


def _fact_problem(text: str, lang: object) -> str | None:
    if lang not in LANGS:
        return f"'lang' should be one of {', '.join(LANGS)}, got {lang!r}"
    if not text.strip():
        return "a fact needs some text"
    if len(text) > MAX_FACT_CHARS:
        return f"a fact is limited to {MAX_FACT_CHARS} characters, got {len(text)}"
    return None
