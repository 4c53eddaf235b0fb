"""The hand-written seed: training pairs, evaluation items, out-of-domain probes, conversations.

Evaluation comes in two splits: "dev", to tune on, and "heldout", looked at once per design; the
traffic set (simulated fans' questions, bench/self_improvement.py) is a third set of the same form,
apart from both. They are loaded line by line with their place kept, so a mistake in a seed file is reported as
`file:line: reason` and the cross-file rules (no eval question leaking into training, every
evaluated fact taught) can point at both ends of the clash.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .jsonl import Problem, field_problem, read_jsonl, report
from .text import normalise

LANGS = ("en", "pt")
QA_GLOB = "qa-*.jsonl"
EVAL_GLOB = "eval-*.jsonl"
OOD_FILE = "out_of_domain.jsonl"
# split -> (in-domain items, out-of-domain probes)
EVAL_FILES = {"heldout": (EVAL_GLOB, OOD_FILE), "dev": ("dev.jsonl", "ood_dev.jsonl")}
SPLITS = tuple(EVAL_FILES)
CONVERSATIONS_FILE = "multiturn.jsonl"
TRAFFIC_FILE = "traffic.jsonl"
QA_KINDS = ("qa", "decline")
ANSWER, DECLINE = "answer", "decline"


class SeedError(ValueError):
    """The seed files break a rule; the message has one `file:line: reason` per problem."""


@dataclass(frozen=True)
class QAPair:
    id: str
    fact: int | None
    lang: str
    question: str
    answer: str
    kind: str = "qa"
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class EvalItem:
    id: str
    fact: int
    lang: str
    question: str
    key_facts: tuple[tuple[str, ...], ...]
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)
    facts: tuple[int, ...] = field(default=(), compare=False)  # every fact that answers it


@dataclass(frozen=True)
class ConversationTurn:
    question: str
    expected: str  # ANSWER or DECLINE
    key_facts: tuple[tuple[str, ...], ...] = ()  # what a right answer states (ANSWER turns)


@dataclass(frozen=True)
class Conversation:
    id: str
    split: str
    lang: str
    turns: tuple[ConversationTurn, ...]
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class OODItem:
    id: str
    lang: str
    question: str
    expected: str = "decline"
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)


@dataclass
class Seed:
    qa: list[QAPair]
    eval: list[EvalItem]
    ood: list[OODItem]
    problems: list[Problem]

    def check(self) -> None:
        """Raise `SeedError` listing every problem, for callers that must not run on a bad seed."""
        if self.problems:
            raise SeedError("\n".join(str(problem) for problem in self.problems))


def load_seed(seed_dir: Path) -> Seed:
    """Load all seed files and check the rules that span them; problems are collected, not raised."""
    problems: list[Problem] = []
    qa = load_qa(seed_dir, problems)
    eval_items = load_eval(seed_dir, problems)
    ood = load_ood(seed_dir, problems)
    problems.extend(consistency_problems(qa, eval_items, ood))
    return Seed(qa, eval_items, ood, problems)


def load_qa(seed_dir: Path, problems: list[Problem]) -> list[QAPair]:
    pairs = []
    for path, line, record in _records(seed_dir, QA_GLOB, problems):
        reason = field_problem(
            record, {"id": str, "lang": str, "question": str, "answer": str, "fact": (int, type(None))}
        ) or _lang_problem(record)
        kind = record.get("kind", "qa")
        if reason is None and kind not in QA_KINDS:
            reason = f"'kind' should be one of {', '.join(QA_KINDS)}, got {kind!r}"
        if reason is None and record["fact"] is None and kind != "decline":
            reason = "'fact' may be null only for kind 'decline'"
        if reason:
            report(problems, path, line, reason)
            continue
        pairs.append(
            QAPair(
                record["id"],
                record["fact"],
                record["lang"],
                record["question"],
                record["answer"],
                kind,
                str(path),
                line,
            )
        )
    return pairs


def load_eval(seed_dir: Path, problems: list[Problem], split: str = "heldout") -> list[EvalItem]:
    return _load_items(seed_dir, EVAL_FILES[split][0], problems)


def load_traffic(seed_dir: Path, problems: list[Problem]) -> list[EvalItem]:
    """The questions simulated fans ask, with the key facts that make an answer right."""
    return _load_items(seed_dir, TRAFFIC_FILE, problems)


def _load_items(seed_dir: Path, pattern: str, problems: list[Problem]) -> list[EvalItem]:
    items = []
    for path, line, record in _records(seed_dir, pattern, problems):
        reason = field_problem(
            record, {"id": str, "fact": int, "lang": str, "question": str, "key_facts": list}
        ) or _lang_problem(record)
        groups = record.get("key_facts")
        if reason is None and not _is_groups(groups):
            reason = "'key_facts' should be a non-empty list of non-empty lists of non-empty strings"
        facts = record.get("facts", [record.get("fact")])
        if reason is None and not (isinstance(facts, list) and facts and all(isinstance(n, int) for n in facts)):
            reason = "'facts' should be a non-empty list of fact numbers"
        if reason:
            report(problems, path, line, reason)
            continue
        key_facts = tuple(tuple(alternatives) for alternatives in groups)
        items.append(
            EvalItem(
                record["id"],
                record["fact"],
                record["lang"],
                record["question"],
                key_facts,
                str(path),
                line,
                tuple(facts),
            )
        )
    return items


def load_conversations(seed_dir: Path, problems: list[Problem], split: str = "heldout") -> list[Conversation]:
    """The multi-turn set's conversations of one split."""
    conversations = []
    for path, line, record in _records(seed_dir, CONVERSATIONS_FILE, problems):
        reason = field_problem(record, {"id": str, "split": str, "lang": str, "turns": list}) or _lang_problem(record)
        turns = []
        for number, turn in enumerate(record.get("turns") or [], 1):
            if reason is not None:
                break
            if (
                not isinstance(turn, dict)
                or not isinstance(turn.get("question"), str)
                or turn.get("expected") not in (ANSWER, DECLINE)
            ):
                reason = f"turn {number}: needs a 'question' and 'expected' {ANSWER!r} or {DECLINE!r}"
            elif turn["expected"] == ANSWER and not _is_groups(turn.get("key_facts")):
                reason = f"turn {number}: an answer turn needs 'key_facts' (lists of phrasings)"
            else:
                turns.append(
                    ConversationTurn(
                        turn["question"], turn["expected"], tuple(tuple(group) for group in turn.get("key_facts") or ())
                    )
                )
        if reason is None and record["split"] not in SPLITS:
            reason = f"'split' should be one of {', '.join(SPLITS)}, got {record['split']!r}"
        if reason is None and not turns:
            reason = "'turns' should hold at least one turn"
        if reason:
            report(problems, path, line, reason)
            continue
        if record["split"] == split:
            conversations.append(
                Conversation(record["id"], record["split"], record["lang"], tuple(turns), str(path), line)
            )
    return conversations


def load_ood(seed_dir: Path, problems: list[Problem], split: str = "heldout") -> list[OODItem]:
    items = []
    for path, line, record in _records(seed_dir, EVAL_FILES[split][1], problems):
        reason = field_problem(record, {"id": str, "lang": str, "question": str, "expected": str}) or _lang_problem(
            record
        )
        if reason is None and record["expected"] != "decline":
            reason = f"'expected' should be 'decline', got {record['expected']!r}"
        if reason:
            report(problems, path, line, reason)
            continue
        items.append(OODItem(record["id"], record["lang"], record["question"], record["expected"], str(path), line))
    return items


def consistency_problems(qa: list[QAPair], eval_items: list[EvalItem], ood: list[OODItem]) -> list[Problem]:
    """The rules across files: unique ids and questions, eval facts taught, both languages."""
    problems: list[Problem] = []
    everything: list[QAPair | EvalItem | OODItem] = [*qa, *eval_items, *ood]
    first_by_id: dict[str, QAPair | EvalItem | OODItem] = {}
    first_by_question: dict[str, QAPair | EvalItem | OODItem] = {}
    for item in everything:
        earlier = first_by_id.setdefault(item.id, item)
        if earlier is not item:
            report(problems, item.file, item.line, f"id {item.id!r} already used at {_at(earlier)}")
        earlier = first_by_question.setdefault(normalise(item.question), item)
        if earlier is not item:
            report(
                problems, item.file, item.line, f"question of {item.id!r} duplicates {earlier.id!r} at {_at(earlier)}"
            )
    taught = {pair.fact for pair in qa if pair.fact is not None}
    for item in eval_items:
        if item.fact not in taught:
            report(
                problems,
                item.file,
                item.line,
                f"eval item {item.id!r} tests fact {item.fact}, which no training pair teaches",
            )
    for name, items in (("qa", qa), ("eval", eval_items), ("out-of-domain", ood)):
        missing = sorted(set(LANGS) - {item.lang for item in items})
        if missing:
            report(problems, name, 0, f"no {name} items in language(s): {', '.join(missing)}")
    return problems


def _records(seed_dir: Path, pattern: str, problems: list[Problem]) -> Iterator[tuple[Path, int, dict]]:
    paths = sorted(seed_dir.glob(pattern))
    if not paths:
        report(problems, seed_dir, 0, f"no {pattern} file")
    for path in paths:
        for line, record in read_jsonl(path, problems):
            yield path, line, record


def _lang_problem(record: dict) -> str | None:
    if record["lang"] not in LANGS:
        return f"'lang' should be one of {', '.join(LANGS)}, got {record['lang']!r}"
    return None


def _all_text(values: Iterable[object]) -> bool:
    return all(isinstance(value, str) and value.strip() for value in values)


def _is_groups(groups: object) -> bool:
    return (
        isinstance(groups, list)
        and bool(groups)
        and all(isinstance(group, list) and group and _all_text(group) for group in groups)
    )


def _at(item: QAPair | EvalItem | OODItem) -> str:
    return f"{item.file}:{item.line}"
