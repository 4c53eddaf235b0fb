"""Building the LoRA training set: seed pairs + vouched-for conversations -> train/valid/test.

Every build is a new immutable folder, written in full under a temporary name and renamed into
place, so a trainer never sees half a dataset; `latest` points at the newest one. A question's
split comes from a salted hash of its normalised text, so it stays in the same split however the
inputs are ordered or grown, and a model is never evaluated on a question it was trained on.

A curated line carries when it was vouched for (`created_at`: the vote or the correction), and the
manifest the newest such time (`curated_until`), the seed's hash and the knowledge the project
shipped: a warm-started training (training/lifecycle/warmstart.py) learns the curated lines newer
than what the production adapter saw, and trains afresh when the seed or the shipped knowledge
changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common.files import fsync_dir, write_atomic, write_synced
from common.home import LATEST_DATASET

from .curation import instructs_the_model
from .jsonl import Problem, field_problem, read_jsonl, report
from .knowledge import knowledge_hash, shipped_knowledge_hash
from .privacy import scrub_counted
from .seed import load_qa
from .settings import DataSettings
from .store import Store
from .text import normalise

log = logging.getLogger(__name__)

SOURCES = ("seed", "feedback", "correction", "extra")
CURATED = ("feedback", "correction")  # vouched for in the bot: a fan's 👍 or an admin's correction
# Which copy of an exact duplicate is kept (and counted): the most trusted source.
PRIORITY = ("correction", "seed", "feedback", "extra")
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
GROUNDED_SUFFIX = "-grounded"  # training grounds `<dataset>` into `<dataset>-grounded-<hash>` beside it
WARM_SUFFIX = "-warm"  # a warm start trains on `<dataset>[-grounded-<hash>]-warm-<hash>` beside it
MIN_EXAMPLES_FOR_VALID = 10
# The layout of a built dataset's lines and manifest; raising it makes the next training a full one.
DATASET_FORMAT = 1


class BuildError(RuntimeError):
    """Nothing sensible can be built, e.g. there is not a single example."""


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    source: str
    origin: str
    created_at: str = ""
    fact: int | None = None  # the seed fact number: grounding (training/grounding.py) makes sure it is shown
    kind: str = "qa"  # "decline" seed pairs teach saying no, grounded or not
    message_id: int | None = None  # the store's message, for feedback and corrections

    @property
    def key(self) -> tuple[str, str]:
        return normalise(self.question), normalise(self.answer)


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: dict

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]


def build_dataset(settings: DataSettings, store: Store | None = None, extra_jsonl: Sequence[Path] = ()) -> BuildResult:
    """Collect, scrub, deduplicate, split and write a dataset; returns its folder and manifest.

    Without a `store`, the configured database is used if it exists. Curation (data/curation.py):
    a pair whose question instructs the model is withheld, from the store or an extra file; each
    user's thumbs-up add at most FEEDBACK_PER_USER examples; and a thumbs-up never stands beside a
    seed or an admin's answer to the same question (see `deduplicate`).
    """
    problems: list[Problem] = []
    examples = [
        Example(pair.question, pair.answer, "seed", f"{pair.file}:{pair.line}", fact=pair.fact, kind=pair.kind)
        for pair in load_qa(settings.seed_dir, problems)
    ]
    knowledge = shipped = None  # the knowledge base's hashes: grounded prompts depend on it like on the data
    withheld = {"instructions": 0, "over_user_cap": 0}
    if store is not None:
        curated, opted_out, scrubbed = _curated(store, problems, settings.feedback_per_user, withheld)
        knowledge, shipped = knowledge_hash(store), shipped_knowledge_hash(store)
    elif settings.home.database.exists():
        with Store(settings.home.database) as own_store:
            curated, opted_out, scrubbed = _curated(own_store, problems, settings.feedback_per_user, withheld)
            knowledge, shipped = knowledge_hash(own_store), shipped_knowledge_hash(own_store)
    else:
        curated, opted_out, scrubbed = [], 0, 0
    examples += curated
    for path in extra_jsonl:
        extra, extra_scrubbed = _extra(Path(path), problems)
        withheld["instructions"] += sum(instructs_the_model(example.question) for example in extra)
        examples += [example for example in extra if not instructs_the_model(example.question)]
        scrubbed += extra_scrubbed
    kept, duplicates, superseded = deduplicate(examples)
    if not kept:
        raise BuildError(f"nothing to build: no training pairs in {settings.seed_dir}, the database or the extra files")
    splits = split_examples(kept, settings)
    seed_lines = sorted(_chat_line(example) for example in kept if example.source == "seed")
    manifest = {
        "format": DATASET_FORMAT,
        "sources": {source: sum(example.source == source for example in kept) for source in SOURCES},
        "dropped": {"duplicates": duplicates, "superseded": superseded, "opted_out": opted_out, **withheld},
        "scrubbed_replacements": scrubbed,
        # Which logged messages it holds (ids, no user data): a forget drops the datasets holding
        # any message that is gone (data/retention.py).
        "message_ids": sorted(example.message_id for example in kept if example.message_id is not None),
        "knowledge_hash": knowledge,
        "shipped_knowledge_hash": shipped,
        "seed_hash": hashlib.sha256("".join(seed_lines).encode("utf-8")).hexdigest(),
        "curated_until": max((e.created_at for e in kept if e.source in CURATED), default=None),
        "problems": [problem.to_dict() for problem in problems],
        "settings": {
            "valid_fraction": settings.valid_fraction,
            "test_fraction": settings.test_fraction,
            "split_salt": settings.split_salt,
        },
    }
    return _write(settings.home.datasets, splits, manifest)


def latest_dataset(settings: DataSettings) -> Path | None:
    """The newest complete dataset folder, or None if nothing was built yet."""
    pointer = settings.home.latest_dataset
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["dataset"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring unreadable dataset pointer %s: %s", pointer, error)
        return None
    folder = settings.home.datasets / str(name)
    if Path(str(name)).name != name or not (folder / MANIFEST).is_file():
        log.warning("dataset pointer %s names a missing dataset %r", pointer, name)
        return None
    return folder


def built_dataset_name(folder_name: str) -> str:
    """The built dataset a dataset folder derives from (grounded, warm-start copies), or its own name."""
    for suffix in (GROUNDED_SUFFIX, WARM_SUFFIX):
        folder_name = folder_name.split(f"{suffix}-")[0]
    return folder_name


def deduplicate(examples: Iterable[Example]) -> tuple[list[Example], int, int]:
    """Keep one of each (question, answer), only the latest correction of a question, and no
    thumbs-up pair for a question the seed answers: a fan's vote weighs less than the seed's and
    the admins' words, so it never stands beside them.

    Returns the kept examples, how many were exact duplicates, and how many were superseded by
    an admin's correction or a seed pair. The order of the input does not matter.
    """
    ordered = sorted(
        examples,
        key=lambda example: (
            PRIORITY.index(example.source),
            example.key,
            example.question,
            example.answer,
            example.origin,
        ),
    )
    corrected: dict[str, Example] = {}
    for example in ordered:
        if example.source == "correction":
            current = corrected.get(example.key[0])
            if current is None or example.created_at > current.created_at:
                corrected[example.key[0]] = example
    seeded = {example.key[0] for example in ordered if example.source == "seed"}
    seen: set[tuple[str, str]] = set()
    kept, duplicates, superseded = [], 0, 0
    for example in ordered:
        winner = corrected.get(example.key[0])
        if (winner is not None and example is not winner) or (
            example.source == "feedback" and example.key[0] in seeded and example.key not in seen
        ):
            superseded += 1
        elif example.key in seen:
            duplicates += 1
        else:
            seen.add(example.key)
            kept.append(example)
    return kept, duplicates, superseded


def split_of(question: str, settings: DataSettings) -> str:
    """The split of a question, from where the salted hash of its normalised text falls in [0, 1)."""
    position = _position(question, settings.split_salt)
    if position < settings.valid_fraction:
        return "valid"
    if position < settings.valid_fraction + settings.test_fraction:
        return "test"
    return "train"


def split_examples(examples: Sequence[Example], settings: DataSettings) -> dict[str, list[Example]]:
    """Examples per split, each sorted by question; valid is never empty from 10 examples on."""
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for example in examples:
        splits[split_of(example.question, settings)].append(example)
    train_questions = {normalise(example.question) for example in splits["train"]}
    if not splits["valid"] and len(examples) >= MIN_EXAMPLES_FOR_VALID and len(train_questions) > 1:
        # Too few examples for the hash to reach valid: move the train question nearest to it.
        nearest = min(train_questions, key=lambda question: _position(question, settings.split_salt))
        splits["valid"] = [e for e in splits["train"] if normalise(e.question) == nearest]
        splits["train"] = [e for e in splits["train"] if normalise(e.question) != nearest]
    for name in SPLITS:
        splits[name].sort(key=lambda example: (*example.key, example.question, example.answer))
    return splits


def _position(question: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\0{normalise(question)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _curated(
    store: Store, problems: list[Problem], per_user: int, withheld: dict[str, int]
) -> tuple[list[Example], int, int]:
    """The store's vouched-for pairs, curated and scrubbed; also how many were withheld for an
    opt-out and how many pieces scrubbed. `withheld` counts the pairs curation kept out."""
    examples, replaced, votes = [], 0, Counter()
    for item in sorted(store.curated_examples(problems), key=lambda item: (item.created_at, item.message_id)):
        if instructs_the_model(item.question):
            withheld["instructions"] += 1
            continue
        if item.source == "feedback":
            votes[item.user_id] += 1
            if votes[item.user_id] > per_user:
                withheld["over_user_cap"] += 1
                continue
        question, in_question = scrub_counted(item.question)
        answer, in_answer = scrub_counted(item.answer)
        replaced += in_question + in_answer
        examples.append(
            Example(
                question, answer, item.source, f"message {item.message_id}", item.created_at, message_id=item.message_id
            )
        )
    return examples, store.withheld_opted_out(), replaced


def _extra(path: Path, problems: list[Problem]) -> tuple[list[Example], int]:
    """Pairs from an extra JSONL file in chat ({"messages": [...]}) or {"question", "answer"} form."""
    examples, replaced = [], 0
    for line, record in read_jsonl(path, problems):
        pair = _chat_pair(record) if "messages" in record else _plain_pair(record)
        if isinstance(pair, str):
            report(problems, path, line, pair)
            continue
        question, in_question = scrub_counted(pair[0])
        answer, in_answer = scrub_counted(pair[1])
        replaced += in_question + in_answer
        examples.append(Example(question, answer, "extra", f"{path}:{line}"))
    return examples, replaced


def _plain_pair(record: dict) -> tuple[str, str] | str:
    reason = field_problem(record, {"question": str, "answer": str})
    return reason if reason else (record["question"], record["answer"])


def _chat_pair(record: dict) -> tuple[str, str] | str:
    """The one user turn and one assistant turn of a chat record (a system turn is ignored)."""
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(item, dict) for item in messages):
        return "'messages' should be a list of objects"
    turns: dict[str, list[str]] = {"user": [], "assistant": []}
    for message in messages:
        reason = field_problem(message, {"role": str, "content": str})
        if reason:
            return f"in 'messages': {reason}"
        if message["role"] in turns:
            turns[message["role"]].append(message["content"])
        elif message["role"] != "system":
            return f"unknown role {message['role']!r}"
    if len(turns["user"]) != 1 or len(turns["assistant"]) != 1:
        return "expected exactly one user and one assistant message"
    return turns["user"][0], turns["assistant"][0]


def _write(datasets_dir: Path, splits: dict[str, list[Example]], manifest: dict) -> BuildResult:
    """Write the split files and manifest into a temporary folder, then rename it into place."""
    datasets_dir.mkdir(parents=True, exist_ok=True)
    contents = {name: "".join(_chat_line(example) for example in splits[name]).encode("utf-8") for name in SPLITS}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    content_hash = hashlib.sha256("".join(f"{name}:{hashes[name]}\n" for name in SPLITS).encode("ascii")).hexdigest()
    created = datetime.now(timezone.utc)
    manifest = {
        "created_at": created.isoformat(timespec="seconds"),
        "content_hash": content_hash,
        "splits": {name: {"count": len(splits[name]), "sha256": hashes[name]} for name in SPLITS},
        **manifest,
    }
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=datasets_dir))
    try:
        for name, data in contents.items():
            write_synced(staging / f"{name}.jsonl", data)
        write_synced(staging / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        fsync_dir(staging)
        folder = _rename_unique(staging, datasets_dir, f"{created:%Y%m%dT%H%M%SZ}-{content_hash[:12]}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(datasets_dir)
    pointer = {"dataset": folder.name, "content_hash": content_hash, "created_at": manifest["created_at"]}
    write_atomic(datasets_dir / LATEST_DATASET, json.dumps(pointer))  # readers: the old one or the new
    return BuildResult(folder, manifest)


def _rename_unique(staging: Path, parent: Path, base: str) -> Path:
    """Rename the staging folder to `base` (or `base-2`, ... if two builds share a second)."""
    number = 1
    while True:
        target = parent / (base if number == 1 else f"{base}-{number}")
        if not target.exists():
            try:
                staging.rename(target)
                return target
            except OSError:
                if not target.exists():
                    raise
        number += 1


def _chat_line(example: Example) -> str:
    record = {
        "messages": [{"role": "user", "content": example.question}, {"role": "assistant", "content": example.answer}]
    }
    if example.source == "seed":  # extra keys: the trainer reads only "messages"
        record |= {"source": "seed", "fact": example.fact, "kind": example.kind}
    elif example.source in CURATED:
        record |= {"source": example.source, "created_at": example.created_at}
    return json.dumps(record, ensure_ascii=False) + "\n"
