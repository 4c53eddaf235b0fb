"""Scoring a model on the seed's held-out questions and out-of-domain probes.

Every in-domain answer is right (it states every key fact; each may be phrased several ways),
declined (it says it does not know), or wrong: it asserts something else, which is worse than a
decline. The comparison ignores case, accents, dash styles and thousands separators, so "14 000"
and "14,000" or "Sao Luis" and "São Luís" count the same. Out-of-domain probes pass when the answer
declines. One decline rule serves both: the phrases below, in either language (a reply mentioning
Farense is not a decline by itself).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from .seed import LANGS, EvalItem, OODItem, load_eval, load_ood
from .settings import DataSettings
from .text import normalise

__all__ = ["normalise", "evaluate", "EvalReport", "ItemResult", "OODResult", "contains", "is_decline"]

RIGHT, DECLINED, WRONG = "right", "declined", "wrong"
VERDICTS = (RIGHT, DECLINED, WRONG)
# How the bot and its model say they do not know (the bot's own declines included), normalised.
DECLINE_PHRASES = (
    "only know about",
    "i only know",
    "don't know",
    "do not know",
    "found nothing",
    "no information",
    "not sure",
    "can't answer",
    "cannot answer",
    "can't help",
    "cannot help",
    "i'm sorry",
    "sorry,",
    "so sei",
    "nao sei",
    "nao encontrei",
    "nao tenho informac",
    "nao tenho essa informac",
    "nao consigo responder",
    "nao posso responder",
    "desculpa",
    "lamento",
)


@dataclass(frozen=True)
class ItemResult:
    id: str
    lang: str
    question: str
    answer: str
    passed: bool
    matched_groups: tuple[bool, ...]
    declined: bool = False  # not right, and the answer says it does not know

    @property
    def verdict(self) -> str:
        return RIGHT if self.passed else DECLINED if self.declined else WRONG


@dataclass(frozen=True)
class OODResult:
    id: str
    lang: str
    question: str
    answer: str
    declined: bool


@dataclass(frozen=True)
class EvalReport:
    items: tuple[ItemResult, ...]
    ood: tuple[OODResult, ...]

    @property
    def accuracy(self) -> float | None:
        return _mean([item.passed for item in self.items])

    @property
    def accuracy_by_lang(self) -> dict[str, float | None]:
        return {lang: _mean([item.passed for item in self.items if item.lang == lang]) for lang in LANGS}

    def verdicts(self, lang: str | None = None) -> dict[str, float | None]:
        """Shares of right, declined and wrong answers (in `lang`, or all)."""
        chosen = [item.verdict for item in self.items if lang is None or item.lang == lang]
        return {verdict: _mean([found == verdict for found in chosen]) for verdict in VERDICTS}

    @property
    def wrong_rate(self) -> float | None:
        return self.verdicts()[WRONG]

    @property
    def key_fact_recall(self) -> float | None:
        """Partial credit: the share of all key-fact groups that answers stated."""
        return _mean([matched for item in self.items for matched in item.matched_groups])

    @property
    def ood_decline_rate(self) -> float | None:
        return _mean([result.declined for result in self.ood])

    def to_dict(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "accuracy_by_lang": self.accuracy_by_lang,
            "verdicts": self.verdicts(),
            "verdicts_by_lang": {lang: self.verdicts(lang) for lang in LANGS},
            "key_fact_recall": self.key_fact_recall,
            "ood_decline_rate": self.ood_decline_rate,
            "counts": {"items": len(self.items), "ood": len(self.ood)},
            "items": [asdict(item) for item in self.items],
            "ood": [asdict(result) for result in self.ood],
        }

    def summary(self) -> str:
        by_lang = ", ".join(f"{lang} {_percent(value)}" for lang, value in self.accuracy_by_lang.items())
        shares = self.verdicts()
        return (
            f"accuracy {_percent(self.accuracy)} ({by_lang}) | declined {_percent(shares[DECLINED])}"
            f" | wrong {_percent(shares[WRONG])} | key facts"
            f" {_percent(self.key_fact_recall)} | out-of-domain declined"
            f" {_percent(self.ood_decline_rate)} | {len(self.items)} items, {len(self.ood)} ood"
        )


def contains(answer: str, phrase: str) -> bool:
    """Whether the normalised answer has the phrase at the start of a word.

    A phrase may be a stem ("administrativ" matches "administrativa"), but a number must stand
    alone: "7" is not found in "1970", nor "1910" in "19100".
    """
    return _phrase_pattern(normalise(phrase)).search(normalise(answer)) is not None


def is_decline(answer: str) -> bool:
    """Whether an answer says it does not know (in English or Portuguese)."""
    text = normalise(answer)
    return any(phrase in text for phrase in DECLINE_PHRASES)


def evaluate(
    generate: Callable[[str, str], str],
    items: Sequence[EvalItem] | None = None,
    ood_items: Sequence[OODItem] | None = None,
    limit: int | None = None,
) -> EvalReport:
    """Ask `generate(question, lang)` every item (sorted by id, at most `limit` of each kind).

    Without explicit items the seed's eval and out-of-domain files are used.
    """
    if items is None or ood_items is None:
        seed_dir = DataSettings.load().seed_dir
        items = load_eval(seed_dir, []) if items is None else items
        ood_items = load_ood(seed_dir, []) if ood_items is None else ood_items
    chosen = sorted(items, key=lambda item: item.id)[:limit]
    chosen_ood = sorted(ood_items, key=lambda item: item.id)[:limit]
    results = []
    for item in chosen:
        answer = generate(item.question, item.lang)
        groups = tuple(any(contains(answer, alternative) for alternative in group) for group in item.key_facts)
        passed = all(groups)
        results.append(
            ItemResult(item.id, item.lang, item.question, answer, passed, groups, not passed and is_decline(answer))
        )
    ood_results = []
    for probe in chosen_ood:
        answer = generate(probe.question, probe.lang)
        ood_results.append(OODResult(probe.id, probe.lang, probe.question, answer, is_decline(answer)))
    return EvalReport(tuple(results), tuple(ood_results))


@lru_cache(maxsize=4096)
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    start = r"(?<!\w)" if phrase[:1].isalnum() else ""
    end = r"(?!\d)" if phrase[-1:].isdigit() else ""
    return re.compile(start + re.escape(phrase) + end)


def _mean(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
