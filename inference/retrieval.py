"""Which facts answer a question: Snowball-stemmed terms, a lexicon, bm25 and query-term coverage.

Why not FTS5's own bm25 with the porter tokenizer: porter is English-only ("fundou" never met
"fundado"), and an absolute bm25 floor cannot tell "one matching rare word" ("colours") from
"irrelevant". So each question word is stemmed in the question's language (Snowball EN or PT),
FTS5 finds candidate facts by prefix, and here a fact's word matches when its stem is the same
("fundou", "fundado": "fund"). Fans say things the facts say otherwise ("born" for "founded",
"mister" for "treinador"): the knowledge base's lexicon (table `synonyms`) lets a question word
also match the facts' words for it, as one term. A seed fact's EN and PT versions are one document
(inference/grounding.py), so either version's words find it.

Candidates are scored with bm25 without its length penalty (b=0: every fact is one sentence, and
FTS5's fixed b=0.75 ranked "Hassan Nader also has Portuguese nationality." above the fact saying
who he was; ties go to the earlier fact, and the seed facts introduce a subject before detailing
it). Relevance is coverage, the idf-weighted share of the question's telling words a fact holds,
or failing that enough bm25 from two or more of them (a long question's other words may simply be
phrased differently). A word no fact holds ("Braga", "paracetamol") weighs the most, so a question
about something else is declined even when one of its words is common in the knowledge base. A
word naming another club or competition (table `other_subjects`: Benfica, Porto...) weighs nothing
by itself: only a fact naming it too can answer, by the question's other words, so "What is
Benfica's stadium?" is not answered with Hassan's Benfica years. A question set in time ("now",
"last time", "next game") is answered from the facts of that time (`when_asked`).
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from os.path import commonprefix

import Stemmer

MAX_QUERY_TERMS = 24
# Shortest shared stem-and-word prefix that matches by itself (4 beat 5, 6 and none on the dev set).
MIN_PREFIX = 4
BM25_K1 = 1.2
BM25_B = 0.0  # measured on the dev questions: 0.3 and 0.75 both lost recall
# Words in nearly every fact: they pick no fact, so they count only when nothing else is asked.
GENERIC_TERMS = frozenset({"farense", "sporting", "clube", "club", "sc", "faro", "leoes", "lions"})

# Words that say nothing about which fact is meant: after the Snowball project's English and
# Portuguese stop word lists (folded), plus question words and chat filler.
STOP_WORDS = frozenset(
    """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
hers herself it its itself they them their theirs themselves what which who whom this that these
those am is are was were be been being have has had having do does did doing would should could
ought a an the and but if or because as until while of at by for with about against between into
through during before after above below to from up down in out on off over under again further
then once here there when where why how all any both each few more most other some such no nor not
only own same so than too very can will just don now also ever still get got really please tell
give know name many much let like say said whose year
de a o que e do da em um uns umas para com nao uma os no se na por mais as dos como mas ao ele das
seu sua ou quando muito nos ja eu tambem so pelo pela ate isso ela entre depois sem mesmo aos seus quem nas
me esse eles voce essa num nem suas meu as minha numa pelos elas qual nos lhe deles essas esses
pelas este dele tu te voces vos lhes meus minhas teu tua teus tuas nosso nossa nossos nossas dela
delas esta estes estas aquele aquela aqueles aquelas isto aquilo estou estamos estao estive esteve
estivemos estiveram estava estavamos estavam estivera estiveramos esteja estejamos estejam
estivesse estivessemos estivessem estiver estivermos estiverem hei ha havemos hao houve houvemos
houveram houvera houveramos haja hajamos hajam houvesse houvessemos houvessem houver houvermos
houverem houverei houvera houveremos houverao houveria houveriamos houveriam sou somos sao era
eramos eram fui foi fomos foram fora foramos seja sejamos sejam fosse fossemos fossem for formos
forem serei sera seremos serao seria seriamos seriam tenho tem temos tem tinha tinhamos tinham tive
teve tivemos tiveram tivera tiveramos tenha tenhamos tenham tivesse tivessemos tivessem tiver
tivermos tiverem terei tera teremos terao teria teriamos teriam ser ter porque onde quais quanto
quantos quanta quantas diz diga dizer sabes sabe conta qualquer algum alguma agora ainda fica ficam
vez muito entao antes podes pode ano sempre neste nesta nestes nestas deste desta destes destas
""".split()
)
# When a question is set in time. "Now" asks about the latest season the facts know; "last time"
# asks for the most recent of the matching facts; a question about the future ("next game") has
# no answer in a knowledge base of what happened.
NOW_WORDS = frozenset(
    "now current currently nowadays today presently moment agora atual atualmente"
    " actual actualmente hoje momento".split()
)
NOW_PAIRS = frozenset(
    {
        ("this", "season"),
        ("this", "year"),
        ("last", "year"),
        ("esta", "epoca"),
        ("este", "ano"),
        ("ano", "passado"),
        ("epoca", "passada"),
        ("last", "season"),
        ("this", "term"),
    }
)
LATEST_PAIRS = frozenset({("last", "time"), ("ultima", "vez"), ("most", "recent"), ("mais", "recente")})
LATEST_WORDS = frozenset({"latest", "recently", "recentemente"})
FUTURE_WORDS = frozenset({"upcoming", "tomorrow", "proximo", "proxima", "proximos", "proximas", "amanha"})
_YEAR = re.compile(r"\b(19\d\d|20\d\d)\b")
_WORDS = re.compile(r"\w+")
_STEMMERS = {"en": "english", "pt": "portuguese"}


@dataclass(frozen=True)
class Term:
    word: str  # folded question word
    stem: str  # its Snowball stem in the question's language
    lang: str
    also: tuple[tuple[str, str], ...] = ()  # (word, stem) the lexicon says the facts use for it
    other: bool = False  # names another club or competition: ranks facts, cannot make one relevant

    @property
    def prefix(self) -> str:
        """What the stem and the word share ("history" -> "histori": "histor")."""
        return _prefix(self.word, self.stem)

    def fts(self) -> str:
        """Candidates for this term as an FTS5 query atom (quoted: user text is never FTS syntax).

        A prefix query one letter short of `prefix` (a fact's word may be stemmed differently:
        "story"/"stories") over-fetches; `matches` decides. Numbers match whole: "19" is not 1990.
        """
        atoms = [_atom(word, stem) for word, stem in ((self.word, self.stem), *self.also)]
        return atoms[0] if len(atoms) == 1 else f"({' OR '.join(atoms)})"

    def matches(self, token: str) -> bool:
        """A fact's word matches if it is the word (or a word the lexicon gives for it), has the
        same stem, or starts with a prefix of at least MIN_PREFIX letters ("fund" finds
        "fundadores"; "cor" does not find "Correia"). A name of another club or competition
        matches as written, or as the lexicon writes it ("Sporting CP": "Sporting Clube de
        Portugal")."""
        if self.other:
            return token == self.word or any(token == word for word, _ in self.also)
        return any(_matches(word, stem, self.lang, token) for word, stem in ((self.word, self.stem), *self.also))

    @property
    def starts(self) -> set[str]:
        """The first two letters of every word this term can match."""
        return {word[:2] for word, _ in ((self.word, self.stem), *self.also)}


@lru_cache(maxsize=65536)
def _prefix(word: str, stem_: str) -> str:
    return commonprefix([stem_, word]) or word


def _atom(word: str, stem_: str) -> str:
    if word.isdigit():
        return f'"{word}"'
    prefix = _prefix(word, stem_)
    return f'"{prefix[: max(len(prefix) - 1, 2)]}"*'


def _matches(word: str, stem_: str, lang: str, token: str) -> bool:
    if token == word or word.isdigit() or token[:2] != word[:2]:
        return token == word
    prefix = _prefix(word, stem_)
    return (len(prefix) >= MIN_PREFIX and token.startswith(prefix)) or stem(token, lang) == stem_


def fold(text: str) -> str:
    """Lower case without accents, as the FTS index stores words ("São Luís" -> "sao luis")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def words(text: str) -> list[str]:
    """The folded words of a text, as the FTS5 unicode61 tokenizer splits them."""
    return _WORDS.findall(fold(text).replace("_", " "))


def query_terms(text: str) -> list[str]:
    """The words of a question that can pick a fact: folded, stop words dropped, first come first."""
    terms: dict[str, None] = {}
    for word in words(text):
        if word not in STOP_WORDS and (len(word) > 1 or word.isdigit()):
            terms.setdefault(word, None)
    return list(terms)[:MAX_QUERY_TERMS]


def when_asked(text: str) -> tuple[str | None, frozenset[str]]:
    """ "now", "latest" or "future" when the question is set in time, else None; with the words
    that said so, which say nothing about which fact is meant ("time" in "last time")."""
    folded = words(text)
    pairs = set(zip(folded, folded[1:]))
    if FUTURE_WORDS.intersection(folded) or any(
        first == "next" and second not in STOP_WORDS for first, second in pairs
    ):
        return "future", frozenset()
    for when, singles, doubles in (("now", NOW_WORDS, NOW_PAIRS), ("latest", LATEST_WORDS, LATEST_PAIRS)):
        said = singles.intersection(folded).union(*(pairs & doubles))
        if said:
            return when, frozenset(said)
    return None, frozenset()


def fact_year(text: str) -> int:
    """The latest year a fact names (a season "2024/25" counts as 2024), 0 if none."""
    return max((int(year) for year in _YEAR.findall(text)), default=0)


_local = threading.local()  # PyStemmer's stemmers must not be shared between threads
_stems: dict[tuple[str, str], str] = {}


def stem(word: str, lang: str) -> str:
    """The Snowball stem of a folded word in `lang` ("en" or "pt"), folded (remembered: the facts'
    vocabulary is small, and stemming every candidate word each query costs milliseconds)."""
    lang = lang if lang in _STEMMERS else "en"
    found = _stems.get((word, lang))
    if found is None:
        stemmers = getattr(_local, "stemmers", None)
        if stemmers is None:
            stemmers = _local.stemmers = {code: Stemmer.Stemmer(name) for code, name in _STEMMERS.items()}
        if len(_stems) > 65536:  # odd user text: start over rather than grow without end
            _stems.clear()
        found = _stems[(word, lang)] = fold(stemmers[lang].stemWord(word))
    return found


Lexicon = dict[tuple[str, str], tuple[str, ...]]  # (lang, stem of a fan's word) -> facts' words


def lexicon_of(rows) -> Lexicon:
    """The lexicon from (lang, word, means) rows, keyed by the stem of the word in its language,
    so any form of it finds the facts' words ("nasceu", "nascido": "nasc" -> "fundado")."""
    found: dict[tuple[str, str], dict[str, None]] = {}
    for lang, word, means in rows:
        found.setdefault((lang, stem(word, lang)), {})[means] = None
    return {key: tuple(words) for key, words in found.items()}


def search_terms(
    text: str, lang: str, lexicon: Lexicon | None = None, others: frozenset[str] = frozenset()
) -> list[Term]:
    """The question's telling words as terms; generic words only if there is nothing else.

    Words are stemmed folded, as the facts' words are, so both sides always agree. A word the
    `lexicon` knows also matches the facts' words for it, as one term: the question asked one thing.
    A word in `others` (another club or competition) is marked `other`.
    """
    terms = query_terms(text)
    telling = [term for term in terms if term not in GENERIC_TERMS] or terms
    found = []
    for word in telling:
        stemmed = stem(word, lang)
        also = (lexicon or {}).get((lang, stemmed), ())
        found.append(
            Term(
                word,
                stemmed,
                lang,
                tuple((means, stem(means, lang)) for means in also if means != word),
                word in others,
            )
        )
    return found


_word_cache: dict[str, Counter[str]] = {}


def _cached_words(text: str) -> Counter[str]:
    """How often each word occurs in a text, remembered: the same facts come back query after
    query, and counting them anew would cost most of the 5 ms a query may take."""
    found = _word_cache.get(text)
    if found is None:
        if len(_word_cache) > 4096:  # amended and removed facts' texts: start over
            _word_cache.clear()
        found = _word_cache[text] = Counter(words(text))
    return found


@dataclass(frozen=True)
class Scored:
    key: int  # the candidate's row id
    score: float  # bm25
    coverage: float  # idf-weighted share of the question's terms the fact contains (0..1)
    matched: int  # how many of the question's terms the fact contains
    # (both count only the question's own terms, and only in a fact that names the other club or
    # competition the question names, if any: a question about Benfica's stadium is answered by
    # a fact holding both, never by one about Hassan at Benfica or one about Farense's stadium)


def score_candidates(
    terms: list[Term], candidates: dict[int, str | tuple[str, ...]], live_facts: int, average_words: float
) -> list[Scored]:
    """bm25 and coverage of each candidate (key -> text), best first.

    A candidate may be (text in the question's language, text in the other one), optionally
    followed by (questions it answers in the question's language, in the other one): the other
    language's words match only as written or as the lexicon writes them (names, "UEFA"), since
    stems and prefixes are the question language's ("capital" is not "capitão"). A word in a
    candidate's questions counts once more, however many of them hold it: the questions say how
    fans ask for the fact, and a word repeated over three of them must not outweigh a fact that
    states it ("colours" is the kit's word too: the fact giving the colours must stay first).
    `candidates` must be every live fact matching any term (df is counted over them);
    `live_facts` and `average_words` describe the whole knowledge base.
    """
    parts = {key: ((text,) if isinstance(text, str) else text) + ("", "", "") for key, text in candidates.items()}
    tokens = {key: _cached_words(texts[0]) for key, texts in parts.items()}
    others = {key: _cached_words(texts[1]) for key, texts in parts.items()}
    asked = {key: _cached_words(texts[2]) for key, texts in parts.items()}
    asked_others = {key: _cached_words(texts[3]) for key, texts in parts.items()}
    by_start: dict[str, set[str]] = {}  # a matching word starts with the term's first two letters
    for found in (*tokens.values(), *asked.values()):
        for token in found:
            by_start.setdefault(token[:2], set()).add(token)
    matching = [
        [token for start in term.starts for token in by_start.get(start, ()) if term.matches(token)] for term in terms
    ]
    exact = [{term.word, *(word for word, _ in term.also)} for term in terms]

    def count(key: int, words_of_term: list[str], written: set[str]) -> int:
        """How often the candidate holds the term: in its statements, plus one if its questions do."""
        stated = sum(tokens[key][token] for token in words_of_term if token in tokens[key]) + sum(
            others[key][word] for word in written if word in others[key]
        )
        said = any(token in asked[key] for token in words_of_term) or any(word in asked_others[key] for word in written)
        return stated + int(said)

    counts = {key: [count(key, *term_words) for term_words in zip(matching, exact)] for key in parts}
    df = [sum(1 for per_term in counts.values() if per_term[i]) for i in range(len(terms))]
    idf = [math.log(1 + (live_facts - n + 0.5) / (n + 0.5)) for n in df]
    own = [not term.other for term in terms]
    total = sum(weight for weight, counted in zip(idf, own) if counted) or 1.0
    average = max(average_words, 1.0)
    scored = []
    about_others = not all(own)
    for key, per_term in counts.items():
        norm = BM25_K1 * (1 - BM25_B + BM25_B * (sum(tokens[key].values()) + sum(others[key].values())) / average)
        score = sum(weight * tf * (BM25_K1 + 1) / (tf + norm) for weight, tf in zip(idf, per_term) if tf)
        if about_others and not any(tf for tf, counted in zip(per_term, own) if not counted):
            scored.append(Scored(key, score, 0.0, 0))
            continue
        coverage = sum(weight for weight, tf, counted in zip(idf, per_term, own) if tf and counted) / total
        scored.append(Scored(key, score, coverage, sum(1 for tf, counted in zip(per_term, own) if tf and counted)))
    scored.sort(key=lambda item: (-item.score, item.key))
    return scored
