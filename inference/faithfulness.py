"""The faithfulness guard: an answer may state only names and numbers its prompt's facts hold.

A small model shown facts still mixes them up or adds its own ("The 1994 World Cup was won by the
England team"). Before an answer is sent, its claims (numbers, and capitalised words that are not
plain sentence openers) are looked up among the words of the facts it was shown and of the
question. An answer with a claim found in neither is not sent as it is: the caller regenerates it
greedily once, and when that is unsupported too, answers with the best fact itself, cited, which
is true by construction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .grounding import DECLINE, drawn_on
from .retrieval import GENERIC_TERMS, STOP_WORDS, fold, words

# Words that open or fill an answer in capitals without naming anything.
OPENERS = frozenset(
    """
yes no sorry sure well also however according sim nao desculpa claro bem segundo tambem contudo
""".split()
)
_TOKENS = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+")

KEPT, REGENERATED, FACT, QUOTED = "kept", "regenerated", "fact", "quoted"


@dataclass(frozen=True)
class Guarded:
    text: str  # what to send
    verdict: str  # KEPT: the answer as generated; REGENERATED: the greedy retry; FACT: the best fact
    unsupported: tuple[str, ...]  # the claims that made the guard act on the first answer


def claims(answer: str) -> list[str]:
    """The folded numbers and names an answer states, first come first, each once."""
    found: dict[str, None] = {}
    for token in _TOKENS.findall(answer):
        if token.isdigit() or _NUMBER.search(token):
            for number in _NUMBER.findall(token):
                found.setdefault(number.lstrip("0") or "0", None)
        elif token[0].isupper():
            folded = fold(token)
            if folded not in STOP_WORDS and folded not in OPENERS and folded not in GENERIC_TERMS:
                found.setdefault(folded, None)
    return list(found)


def unsupported(answer: str, sources: Iterable[str]) -> list[str]:
    """The claims of `answer` that no word of `sources` (the facts and the question) supports.

    A name matches a source word with the same first five letters ("Portuguese" is not
    "Portugal", but "Olhanense's" is "Olhanense"); a number matches the same number.
    """
    vocabulary: set[str] = set()
    for text in sources:
        for word in words(text):
            vocabulary.add((word.lstrip("0") or "0") if word.isdigit() else word)
            vocabulary.update(number.lstrip("0") or "0" for number in _NUMBER.findall(word))
    prefixes = {word[:5] for word in vocabulary if len(word) >= 5 and not word.isdigit()}
    return [
        claim for claim in claims(answer) if claim not in vocabulary and not (len(claim) >= 5 and claim[:5] in prefixes)
    ]


def guard(answer: str, facts: list[str], question: str, regenerate: Callable[[], str] | None = None) -> Guarded:
    """What to send for `answer`, generated from `facts` (texts, best first) for `question`.

    Without facts (an ungrounded prompt) there is nothing to check against: the answer is kept.
    `regenerate` gives the greedy answer to the same prompt; None when the answer already was one.
    """
    if not facts:
        return Guarded(answer, KEPT, ())
    sources = [*facts, question]
    missing = unsupported(answer, sources) if answer.strip() else ["(empty)"]
    if not missing:
        return Guarded(answer, KEPT, ())
    if regenerate is not None:
        retry = regenerate()
        if retry.strip() and not unsupported(retry, sources):
            return Guarded(retry, REGENERATED, tuple(missing))
    return Guarded(facts[0], FACT, tuple(missing))


def quote(answer: str, facts: list[str], question: str) -> Guarded:
    """ANSWER_FROM=fact: send the fact the model's answer drew on (the best retrieved one when it
    drew on none), so every grounded answer is a knowledge-base sentence, true by construction.

    The model reads the retrieved facts and answers; a small model's own sentence often drops or
    garbles what the fact says, while the fact it reached for is usually the right one.
    """
    if not facts or declines(answer):  # the model says the facts do not answer: trust it
        return Guarded(answer, KEPT, ())
    chosen = (drawn_on(answer, facts, question) or [0])[0]
    return Guarded(facts[chosen], QUOTED, tuple(unsupported(answer, [*facts, question])))


def declines(answer: str) -> bool:
    """Whether the answer is the decline the adapter is trained to give (inference.grounding.DECLINE)
    when the facts it was shown do not answer the question."""
    said = " ".join(words(answer))
    return any(" ".join(words(text.split(",", 1)[1])[:4]) in said for text in DECLINE.values())
