"""Grounded answers: retrieve facts from the knowledge base and put them in the prompt.

A 135M model does not know Farense's history, but it can restate a fact it is shown. So every
answer path (the bot, `python -m inference`, training data, the gate) builds its prompt through
`build_grounded`, and the adapter is trained and judged on exactly what it sees when serving.

Retrieval is SQLite FTS5 over the `facts` table the data package owns, with its lexicon tables
`synonyms` and `other_subjects` (schema in data/migrations.py), read through read-only
connections: this package imports nothing of ours. Scoring is in retrieval.py.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .retrieval import (
    GENERIC_TERMS,
    Lexicon,
    Scored,
    fact_year,
    fold,
    lexicon_of,
    query_terms,
    score_candidates,
    search_terms,
    when_asked,
    words,
)

log = logging.getLogger(__name__)

# The least idf-weighted share of a question's telling words a fact must hold (retrieval.py),
# tuned on the dev questions with bench/retrieval.py.
DEFAULT_MIN_SCORE = 0.5
# ...or, for a long reworded question whose other words no fact holds, this much bm25 from two or
# more words in common.
MIN_EVIDENCE = 4.0
# A fact scoring under this share of the best one's bm25, or holding under this share of what the
# best one holds of the question, is a distractor: a small model tends to copy whatever it is
# shown, so it is left out of the prompt (a Cup-final fact beside the UEFA Cup one).
RELATIVE_MIN_SCORE = 0.6
RELATIVE_MIN_COVERAGE = 0.7
# A fact saying one of these is about the present whatever year it names ("today holds 7,000").
TODAY_WORDS = frozenset({"today", "hoje", "currently", "atualmente"})

PT_MARKERS = frozenset(
    """
o os um uma de do da dos das em no na nos nas ao aos pelo pela por para com que quem qual quais
quando onde como foi e sao esta nao ja tem seu sua ele ela qual anos epoca clube treinador jogou
ganhou quantos quantas golos marcou jogador equipa ola tudo bem obrigado obrigada sim porque eu
voce tu isso isto aqui muito mais meu minha fundado fundou nasceu alcunha cores hino
adeptos treinou taca campeao subiu desceu divisao jogo jogos contra vitoria derrota eram
sabes diz conta fala quero saber depois antes entao tambem
""".split()
)
EN_MARKERS = frozenset(
    """
the who what when where which how is was were did does of in and to for with by from club coach
season won many much played scored goals player team stadium cup first did year hello hi thanks
thank yes you your he she they his her it about tell me know founded born nickname colours colors
anthem fans coached league promoted relegated lost game games against victory defeat have has
are then after before also want
""".split()
)
# Pronouns by which a question points back at the previous one's subject.
REFERRING_WORDS = frozenset(
    """
he him his she her they them their ele ela eles elas dele dela deles delas lhe lhes
""".split()
)
_WORDS = re.compile(r"\w+")
_PT_LETTERS = re.compile(r"[ãõçâêôàÃÕÇÂÊÔÀ]")

INSTRUCTIONS = {
    "en": (
        "You are the SC Farense fans' assistant. Answer the question using only the facts below."
        " Reply in English, in one or two short sentences."
    ),
    "pt": (
        "És o assistente dos adeptos do SC Farense. Responde à pergunta usando apenas os factos"
        " abaixo. Responde em português de Portugal, em uma ou duas frases curtas."
    ),
}
FACTS_HEADING = {"en": "Facts:", "pt": "Factos:"}
NO_FACTS = {
    "en": (
        "You are the SC Farense fans' assistant. No fact about this question was found, so say"
        " briefly that you only know about SC Farense."
    ),
    "pt": (
        "És o assistente dos adeptos do SC Farense. Não foi encontrado nenhum facto sobre esta"
        " pergunta, por isso diz em poucas palavras que só sabes sobre o SC Farense."
    ),
}
DECLINE = {
    "en": "Sorry, I only know about SC Farense, and I found nothing on that.",
    "pt": "Desculpa, só sei sobre o SC Farense e não encontrei nada sobre isso.",
}
SOURCE_LABEL = {"en": ("Source", "Sources"), "pt": ("Fonte", "Fontes")}


@dataclass(frozen=True)
class Fact:
    id: int
    lang: str
    text: str
    source: str
    url: str | None
    score: float  # bm25 relevance (higher is better)
    fact: int | None = None  # seed fact number, shared by its EN and PT versions


@dataclass(frozen=True)
class Grounding:
    messages: list[dict]  # what to generate from
    facts: list[Fact]  # the facts in the prompt, best first
    lang: str  # the question's language
    decline: str | None  # set when grounding found nothing: answer this instead of generating


def detect_language(text: str, default: str = "en") -> str:
    """ "pt" or "en" from marker words and Portuguese letters; `default` when it cannot tell."""
    tokens = _WORDS.findall(fold(text))
    pt = sum(word in PT_MARKERS for word in tokens) + (1 if _PT_LETTERS.search(text) else 0)
    en = sum(word in EN_MARKERS for word in tokens)
    if pt == en:
        return default
    return "pt" if pt > en else "en"


@dataclass(frozen=True)
class _Knowledge:
    """The live facts as retrieval sees them, read once per change of the knowledge base.

    A seed fact's EN and PT versions are one document: each indexes the other, so a question
    finds the fact by words of either version (names, "UEFA", a PT word in an EN question). The
    seed questions it answers index it too: fans ask in words its statement does not use.
    """

    version: object
    rows: dict[int, tuple]  # row id -> (id, lang, text, source, url, fact)
    group_of: dict[int, int]  # row id -> document number (first row's order: earlier facts first)
    groups: list[list[int]]  # document number -> its row ids
    texts: list[str]  # document number -> its versions' text
    by_fact: dict[int, int]  # seed fact number -> document number
    # document number -> lang -> the seed questions it answers, each with its words
    questions: list[dict[str, tuple[tuple[str, list[str]], ...]]]
    average_words: float
    lexicon: Lexicon
    others: frozenset[str]  # words naming another club or competition
    years: list[int]  # document number -> the latest year it names (0: none)
    current: int  # the first year of what "now" means: the latest year named, up to this one, less 1


class RetrievalError(RuntimeError):
    """The knowledge base is there but refused our query: a bug here, never the user's text."""


class FactIndex:
    """Read-only bm25 search over the knowledge base; safe to share between threads.

    Each thread opens its own read-only connection, which sees an admin's change as soon as it is
    committed. A missing database or table gives no facts and one warning (`available()` says
    so); a query the knowledge base refuses raises RetrievalError, so a broken query is seen
    rather than mistaken for "nothing relevant".
    """

    _MATCH = "SELECT rowid FROM facts_fts WHERE facts_fts MATCH ?"
    _QUESTION_MATCH = "SELECT DISTINCT fact FROM fact_questions WHERE fact_questions MATCH ?"
    _VERSION = (
        "SELECT count(*), max(updated_at), (SELECT count(*) FROM synonyms),"
        " (SELECT count(*) FROM other_subjects), (SELECT count(*) FROM fact_questions)"
        " FROM facts WHERE removed_at IS NULL"
    )
    _QUESTIONS = "SELECT fact, lang, question FROM fact_questions ORDER BY rowid"
    _LIVE = "SELECT id, lang, text, source, url, fact, origin FROM facts WHERE removed_at IS NULL ORDER BY id"
    _LEXICON = "SELECT lang, word, means FROM synonyms"
    _OTHERS = "SELECT word FROM other_subjects"

    def __init__(self, db_path: Path, min_score: float = DEFAULT_MIN_SCORE) -> None:
        self.db_path = Path(db_path)
        self.min_score = min_score  # least coverage of the question, 0..1
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._warned = False
        self._knowledge: _Knowledge | None = None

    def search(self, question: str, k: int = 3, lang: str | None = None, min_score: float | None = None) -> list[Fact]:
        """The `k` most relevant live facts, each fact once, best first.

        Relevant: the fact holds at least `min_score` of the question's telling words (coverage,
        idf-weighted, 0..1) or shares two or more of them scoring MIN_EVIDENCE, and is close to
        the best relevant fact (RELATIVE_MIN_SCORE of its bm25, RELATIVE_MIN_COVERAGE of its
        coverage); a question set in time keeps the facts of its time (`_in_time`). A seed fact exists in EN and
        PT; both versions are searched as one, and the one in `lang` is returned (stems are in
        `lang`, else in the language the question seems to be in).
        Fact.score is the bm25 score.
        """
        if not isinstance(question, str) or k < 1:
            return []
        query_lang = lang if lang in ("en", "pt") else detect_language(question)
        threshold = self.min_score if min_score is None else min_score
        try:
            connection = self._connection()
            known = self._known(connection)
        except sqlite3.Error as error:
            self._warn(error)
            return []
        when, said = when_asked(question)
        terms = [
            term for term in search_terms(question, query_lang, known.lexicon, known.others) if term.word not in said
        ]
        if not terms:
            return []
        query = " OR ".join(term.fts() for term in terms)
        try:
            matched = [row[0] for row in connection.execute(self._MATCH, (query,))]
            asked_like = [row[0] for row in connection.execute(self._QUESTION_MATCH, (query,))]
        except sqlite3.Error as error:
            raise RetrievalError(f"knowledge base query {query[:200]!r} failed: {error}") from error
        documents = {known.group_of[key] for key in matched if key in known.group_of}
        documents.update(known.by_fact[fact] for fact in asked_like if fact in known.by_fact)
        asked = words(question)
        scored = score_candidates(
            terms,
            {number: self._texts(known, number, query_lang, asked) for number in documents},
            len(known.texts),
            known.average_words,
        )
        relevant = [
            item for item in scored if item.coverage >= threshold or (item.matched >= 2 and item.score >= MIN_EVIDENCE)
        ]
        relevant = self._in_time(known, relevant, when)
        facts = []
        for item in relevant[:k]:
            if (
                item.score < RELATIVE_MIN_SCORE * relevant[0].score
                or item.coverage < RELATIVE_MIN_COVERAGE * relevant[0].coverage
            ):
                break
            facts.append(self._version_in(known, item.key, lang, item.score))
        return facts

    def seed_fact(self, number: int, lang: str) -> Fact | None:
        """Live seed fact `number`, in `lang` when it has that version: the fact a training pair
        about it is shown (seed rows come first, having been stored first)."""
        try:
            known = self._known(self._connection())
        except sqlite3.Error as error:
            self._warn(error)
            return None
        rows = sorted(
            (row for row in known.rows.values() if row[5] == number), key=lambda row: (row[1] != lang, row[0])
        )
        return Fact(*rows[0][:5], 0.0, rows[0][5]) if rows else None

    @staticmethod
    def _in_time(known: _Knowledge, relevant: list[Scored], when: str | None) -> list[Scored]:
        """The relevant facts a question set in time can use, most recent first.

        "Now": facts naming a year from `known.current` on or saying "today". "Latest": the
        matching facts of the latest year they name. The future: none.
        """
        if when is None or not relevant:
            return relevant
        if when == "future":
            return []
        year = known.years
        if when == "now":
            relevant = [
                item
                for item in relevant
                if year[item.key] >= known.current or TODAY_WORDS & set(words(known.texts[item.key]))
            ]
        else:
            latest = max(year[item.key] for item in relevant)
            relevant = [item for item in relevant if year[item.key] == latest]
        best = max((item.score for item in relevant), default=0.0)
        relevant = [item for item in relevant if item.score >= RELATIVE_MIN_SCORE * best]
        return sorted(relevant, key=lambda item: (-year[item.key], -item.score, item.key))

    @staticmethod
    def _texts(known: _Knowledge, number: int, lang: str, asked: list[str]) -> tuple[str, str, str, str]:
        """Document `number` as (its version in `lang`, its other version, the seed questions it
        answers in `lang`, in the other language); a fact with one version is all `lang`'s,
        whatever language it is written in. A seed question never finds itself (`asked` is the
        question's words): a training prompt for it is grounded as a fan's new wording would be."""
        ids = known.groups[number]
        questions = {
            code: "\n".join(text for text, its_words in texts if its_words != asked)
            for code, texts in known.questions[number].items()
        }
        asked_here = questions.get(lang, "")
        asked_there = "\n".join(text for code, text in questions.items() if code != lang)
        own = [known.rows[key][2] for key in ids if known.rows[key][1] == lang]
        if not own or len(own) == len(ids):
            return known.texts[number], "", asked_here, asked_there
        other = "\n".join(known.rows[key][2] for key in ids if known.rows[key][1] != lang)
        return "\n".join(own), other, asked_here, asked_there

    def _version_in(self, known: _Knowledge, number: int, lang: str | None, score: float) -> Fact:
        """Document `number` as a Fact in `lang` when it has that version, else its first one."""
        ids = known.groups[number]
        chosen = next((key for key in ids if known.rows[key][1] == lang), ids[0])
        return Fact(*known.rows[chosen][:5], score, known.rows[chosen][5])

    def _known(self, connection: sqlite3.Connection) -> _Knowledge:
        """The live facts grouped into documents and the lexicon, re-read after any write."""
        version = connection.execute(self._VERSION).fetchone()
        known = self._knowledge
        if known is not None and known.version == version:
            return known
        rows: dict[int, tuple] = {}
        group_of: dict[int, int] = {}
        by_fact: dict[int, int] = {}
        groups: list[list[int]] = []
        for row in connection.execute(self._LIVE):
            rows[row[0]] = row[:6]
            seed = row[5] if row[6] == "seed" and row[5] is not None else None
            number = by_fact.get(seed) if seed is not None else None
            if number is None:
                number = len(groups)
                groups.append([])
                if seed is not None:
                    by_fact[seed] = number
            groups[number].append(row[0])
            group_of[row[0]] = number
        texts = ["\n".join(rows[key][2] for key in ids) for ids in groups]
        asked: list[dict[str, list[str]]] = [{} for _ in groups]
        for fact, lang, question in connection.execute(self._QUESTIONS):
            if fact in by_fact:
                asked[by_fact[fact]].setdefault(lang, []).append(question)
        questions = [
            {lang: tuple((text, words(text)) for text in found) for lang, found in per_lang.items()}
            for per_lang in asked
        ]
        average = sum(len(words(text)) for text in texts) / max(len(texts), 1)
        lexicon = lexicon_of(connection.execute(self._LEXICON))
        others = frozenset(row[0] for row in connection.execute(self._OTHERS))
        years = [fact_year(text) for text in texts]
        this_year = datetime.now(timezone.utc).year
        current = max((year for year in years if year <= this_year), default=this_year) - 1
        known = _Knowledge(
            version, rows, group_of, groups, texts, by_fact, questions, average, lexicon, others, years, current
        )
        self._knowledge = known
        return known

    def available(self) -> bool:
        """Whether the knowledge base exists: without it, answers go ungrounded rather than declined."""
        try:
            self._connection().execute("SELECT 1 FROM facts_fts LIMIT 0").fetchall()
        except sqlite3.Error as error:
            self._drop_connection()  # retry next time: the bot may create it meanwhile
            self._warn(error)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            connection.close()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
            with self._lock:
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _warn(self, error: sqlite3.Error) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "knowledge base %s unavailable, answering without facts: %s"
                " (it is created when the bot or `python -m data knowledge stats` first"
                " opens the store)",
                self.db_path,
                error,
            )
        else:
            log.debug("knowledge base %s unavailable: %s", self.db_path, error)


def approximate_tokens(text: str) -> int:
    """A tokenizer-free upper estimate (~3 characters a token), for callers without a model."""
    return len(text) // 3 + 1


def facts_block(facts: list[Fact], lang: str) -> str:
    return "\n".join([FACTS_HEADING[lang], *(f"- {fact.text}" for fact in facts)])


def fit_budget(facts: list[Fact], lang: str, budget: int, count_tokens: Callable[[str], int]) -> list[Fact]:
    """The best facts whose block fits in `budget` tokens; the best one is cut to fit if it must."""
    kept: list[Fact] = []
    for fact in facts:
        if count_tokens(facts_block([*kept, fact], lang)) > budget:
            break
        kept.append(fact)
    if kept or not facts:
        return kept
    words = facts[0].text.split()
    while words and count_tokens(facts_block([_with_text(facts[0], words)], lang)) > budget:
        words = words[: len(words) * 3 // 4]
    return [_with_text(facts[0], words)] if words else []


def _with_text(fact: Fact, words: list[str]) -> Fact:
    return Fact(fact.id, fact.lang, " ".join(words) + " …", fact.source, fact.url, fact.score, fact.fact)


def grounded_messages(messages: list[dict], facts: list[Fact], lang: str) -> list[dict]:
    """The conversation behind a system message holding the instructions and the facts.

    Grounding owns the system prompt: a caller's leading system message is replaced, so serving,
    training and the gate all show the model the same words.
    """
    lang = lang if lang in INSTRUCTIONS else "en"
    system = f"{INSTRUCTIONS[lang]}\n\n{facts_block(facts, lang)}" if facts else NO_FACTS[lang]
    rest = messages[1:] if messages and messages[0].get("role") == "system" else messages
    return [{"role": "system", "content": system}, *rest]


def build_grounded(
    messages: list[dict],
    index: FactIndex | None,
    settings,
    count_tokens: Callable[[str], int] = approximate_tokens,
    previous_question: str | None = None,
    default_lang: str = "en",
) -> Grounding:
    """The one prompt constructor for serving, the CLI, training data and the gate.

    `settings` needs grounding, retrieval_top_k, retrieval_min_score and grounding_context_tokens
    (InferenceSettings has them). With grounding off, or no knowledge base at all, the messages
    pass unchanged; with one that holds nothing relevant, `decline` is set.

    A follow-up ("E depois?", "E agora?", "How many goals did he score?": no telling word of
    its own beyond when, or a pronoun pointing back) is searched together with `previous_question` (the user's
    last one), and the model reads both questions; it never sees earlier answers, which a small
    model copies. A short question with a word of its own is not a follow-up: "Qual é o hino?"
    after a question about the UEFA Cup finds nothing on the anthem, and is declined rather than
    answered with the cup facts.

    The answer's language is the question's; when the question does not tell ("Hassan?"),
    `default_lang` (the user's own language, e.g. their Telegram client's).
    """
    question = next(
        (str(message.get("content", "")) for message in reversed(messages) if message.get("role") == "user"), ""
    )
    lang = detect_language(question, default_lang if default_lang in INSTRUCTIONS else "en")
    if not settings.grounding or index is None or not index.available():
        return Grounding(list(messages), [], lang, None)
    if previous_question and is_follow_up(question, lang):
        question = f"{previous_question.strip()}\n{question}"
        messages = [*messages[:-1], {"role": "user", "content": question}]
    found = index.search(question, k=settings.retrieval_top_k, lang=lang, min_score=settings.retrieval_min_score)
    facts = fit_budget(found, lang, settings.grounding_context_tokens, count_tokens)
    return Grounding(grounded_messages(messages, facts, lang), facts, lang, None if facts else DECLINE[lang])


def is_follow_up(question: str, lang: str) -> bool:
    """Whether a question leans on the one before: no telling word of its own, or a pronoun."""
    said = when_asked(question)[1]
    return not [
        term for term in search_terms(question, lang) if term.word not in said
    ] or not REFERRING_WORDS.isdisjoint(words(question))


def used_facts(answer: str, facts: list[Fact], question: str = "") -> list[Fact]:
    """The facts an answer draws on: those sharing at least two telling words with it (one if the
    answer has only one, like "1910") and at least half as many as the fact it shares most with.

    Words of the `question` do not count: every retrieved fact shares them, so an answer that only
    echoes the question ("Hassan Nader was a player") used none of the facts it was shown.
    """
    return [facts[i] for i in drawn_on(answer, [fact.text for fact in facts], question)]


def drawn_on(answer: str, texts: list[str], question: str = "") -> list[int]:
    """`used_facts` over fact texts: the indexes of those the answer draws on, in their order."""
    said = set(query_terms(answer)) - GENERIC_TERMS - set(query_terms(question))
    shared = [len(said & set(query_terms(text))) for text in texts]
    if not said or not shared:
        return []
    needed = max(min(2, len(said)), max(shared) / 2)
    return [i for i, count in enumerate(shared) if count >= needed]


def cite(answer: str, facts: list[Fact], lang: str, question: str = "") -> str:
    """The source line for the facts the answer used ("Source: name — link"); "" if none."""
    sources: dict[tuple[str, str | None], None] = {}
    for fact in used_facts(answer, facts, question):
        sources.setdefault((fact.source, fact.url), None)
    if not sources:
        return ""
    singular, plural = SOURCE_LABEL.get(lang, SOURCE_LABEL["en"])
    parts = [f"{name} — {url}" if url else name for name, url in sources]
    return f"{singular if len(parts) == 1 else plural}: {'; '.join(parts)}"
