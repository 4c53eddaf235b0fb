"""Grounding a built dataset: every example gets the prompt it would get when served.

The bot answers from facts retrieved into a system prompt (inference.grounding.build_grounded), so
the adapter must learn on those prompts: to read the facts it is shown, pick the one that answers,
and say it does not know when none does. `ground_dataset` rewrites a `python -m data build` folder
into a sibling folder whose lines carry the grounded messages and the target answer.

Decisions:
(a) A seed QA pair whose own fact (its seed `fact` number, carried by data/builder.py) was not
    retrieved gets it anyway: it replaces the lowest-ranked retrieved fact (or joins them when fewer
    than RETRIEVAL_TOP_K came back, or is the only fact when none did), at a position drawn from a
    hash of the question, so the model learns to read rather than to copy one slot. Distractors are
    dropped, never the target, to fit GROUNDING_CONTEXT_TOKENS. A declined prompt never reaches the
    model when serving, so giving such a pair its fact costs nothing and teaches reading.
(b) A "decline" seed pair, or any other example for which build_grounded declines, is trained to
    answer DECLINE[lang]: on the no-facts prompt when nothing was retrieved, and on the retrieved
    facts when something was (the model must learn to say no when the facts don't answer).
(c) Feedback and correction examples (no fact number) are grounded exactly as served.
(d) Near misses: for a share of the seed QA pairs (NEAR_MISS_SHARE, drawn from a hash of the
    question), a second example shows the retrieved facts without the pair's own fact and is trained
    to decline. Retrieval misses the answering fact for some questions when serving, and the facts
    it does return are then about the same subject: the model must learn that related is not
    answering. A copy is only made when the answer's names and numbers are not all in the remaining
    facts (they might answer it after all) and when some facts remain (with none, the bot declines
    without the model).
The folder has its own manifest.json (parent dataset hash, knowledge hash, grounding settings,
counts) and content_hash, so a training run's fingerprint changes with the facts it was shown; it is
named after that hash, so a change of facts or of retrieval never overwrites a folder a run used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common.files import read_json_object
from common.progress import Progress
from data.builder import GROUNDED_SUFFIX
from data.knowledge import knowledge_hash
from data.store import Store
from inference.faithfulness import claims, unsupported
from inference.grounding import DECLINE, Fact, FactIndex, build_grounded, facts_block, grounded_messages
from inference.loading import load_base
from inference.settings import InferenceSettings

from ..errors import EXIT_USAGE, UsageError, guarded, parse, report
from ..trainer.launch import latest_dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
COUNTS = ("retrieved", "injected", "declined", "near_miss", "unknown_fact", "skipped")
NEAR_MISS_SHARE = 0.2
# How examples are grounded (prompt layout, injection, near misses, and what retrieval returns): raise
# it with any change that changes the prompts, and the next training is a full one
# (training/lifecycle/warmstart.py), as prompts shaped otherwise are new to an adapter.
GROUNDING_FORMAT = 1


class GroundingError(UsageError, ValueError):
    """The dataset cannot be grounded: no knowledge base, or no dataset folder."""


@dataclass(frozen=True)
class GroundedDataset:
    path: Path
    manifest: dict

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]


def grounding_settings(serving) -> dict:
    return {
        "retrieval_top_k": serving.retrieval_top_k,
        "retrieval_min_score": serving.retrieval_min_score,
        "grounding_context_tokens": serving.grounding_context_tokens,
    }


def default_out_folder(dataset_folder: Path, content_hash: str) -> Path:
    """Next to the built dataset, named after it and the grounded content (which changes with the
    facts, the retrieval and its settings), so a new grounding never overwrites one a run used."""
    dataset_folder = Path(dataset_folder)
    return dataset_folder.parent / f"{dataset_folder.name}{GROUNDED_SUFFIX}-{content_hash[:12]}"


def ground_dataset(
    dataset_folder: Path, out_folder: Path | None, index: FactIndex, serving_settings, tokenizer
) -> GroundedDataset:
    """Write the grounded copy of `dataset_folder`; an identical one already there is kept as is."""
    dataset_folder = Path(dataset_folder)
    if not (dataset_folder / "train.jsonl").is_file():
        raise GroundingError(f"{dataset_folder}: not a dataset folder (no train.jsonl)")
    if not index.available():
        raise GroundingError(
            f"no knowledge base in {index.db_path}: open the store once "
            "(`python -m data knowledge stats`) before grounding"
        )
    parent = read_json_object(dataset_folder / MANIFEST) or {}
    wanted = {
        "format": GROUNDING_FORMAT,
        "parent": {"path": str(dataset_folder), "content_hash": parent.get("content_hash")},
        "knowledge_hash": _knowledge_hash(index.db_path),
        "grounding": grounding_settings(serving_settings),
    }

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text))

    counts: Counter = Counter()
    contents = {}
    records = {
        split: (dataset_folder / f"{split}.jsonl").read_bytes().splitlines()
        if (dataset_folder / f"{split}.jsonl").is_file()
        else []
        for split in SPLITS
    }
    progress = Progress("grounding", sum(map(len, records.values())), unit="example")
    for split in SPLITS:
        lines = []
        path = dataset_folder / f"{split}.jsonl"
        for number, raw in enumerate(records[split], 1):
            progress.update()
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                grounded = ground_example(record, index, serving_settings, count_tokens, counts)
            except (ValueError, TypeError, KeyError) as error:
                log.warning("%s:%d: skipped: %s", path.name, number, error)
                counts["skipped"] += 1
                continue
            for example in grounded:
                lines.append(json.dumps(example, ensure_ascii=False) + "\n")
                counts[f"{split}_examples"] += 1
        contents[split] = "".join(lines).encode("utf-8")
    progress.close()
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    content_hash = hashlib.sha256("".join(f"{name}:{hashes[name]}\n" for name in SPLITS).encode("ascii")).hexdigest()
    manifest = {
        "content_hash": content_hash,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **wanted,
        "splits": {name: {"count": counts[f"{name}_examples"], "sha256": hashes[name]} for name in SPLITS},
        "counts": {key: counts[key] for key in COUNTS},
        "sources": parent.get("sources"),
    }
    out_folder = Path(out_folder) if out_folder else default_out_folder(dataset_folder, content_hash)
    existing = read_json_object(out_folder / MANIFEST) or {}
    if existing.get("content_hash") == content_hash:
        return GroundedDataset(out_folder, existing)
    if out_folder.exists() and "parent" not in existing:
        raise GroundingError(f"{out_folder} exists and is not a grounded dataset: not overwriting it")
    _write_folder(out_folder, contents, manifest)
    log.info("grounded %s -> %s: %s", dataset_folder.name, out_folder.name, manifest["counts"])
    return GroundedDataset(out_folder, manifest)


def ground_example(record: dict, index: FactIndex, serving_settings, count_tokens, counts: Counter) -> list[dict]:
    """One dataset line -> the same line with grounded messages and the target answer, and its near
    miss when it gets one (d); nothing for a pair whose fact is not in the knowledge base (it would
    teach answering from nothing)."""
    messages = record["messages"]
    if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
        raise ValueError("expected messages ending with an assistant answer")
    conversation, answer = messages[:-1], messages[-1]["content"]
    grounding = build_grounded(conversation, index, serving_settings, count_tokens)
    lang, facts = grounding.lang, list(grounding.facts)
    target = record.get("fact") if record.get("kind", "qa") == "qa" else None
    if record.get("kind") == "decline":
        answer = DECLINE[lang]
        counts["declined"] += 1
    elif isinstance(target, int) and not isinstance(target, bool):
        if any(fact.fact == target for fact in facts):
            counts["retrieved"] += 1
        else:
            right = index.seed_fact(target, lang)
            if right is None:  # e.g. an uncertain fact kept out of the knowledge base
                counts["unknown_fact"] += 1
                return []
            facts = _inject(facts, right, conversation, serving_settings, count_tokens, lang)
            counts["injected"] += 1
    elif grounding.decline is not None:
        answer = grounding.decline
        counts["declined"] += 1
    grounded = grounded_messages(conversation, facts, lang) if facts != grounding.facts else grounding.messages
    extra = {key: value for key, value in record.items() if key != "messages"}
    examples = [_example(grounded, answer, extra, facts)]
    if record.get("kind", "qa") == "qa" and isinstance(target, int) and near_miss_chosen(conversation):
        others = [fact for fact in grounding.facts if fact.fact != target]
        if (
            others
            and claims(answer)
            and unsupported(answer, [*(fact.text for fact in others), conversation[-1]["content"]])
        ):
            examples.append(
                _example(
                    grounded_messages(conversation, others, lang), DECLINE[lang], extra | {"kind": "near_miss"}, others
                )
            )
            counts["near_miss"] += 1
    return examples


def near_miss_chosen(conversation: list[dict]) -> bool:
    """Whether this question also gets a near-miss copy: a fixed share, drawn from its hash."""
    return _hash_share(conversation) < NEAR_MISS_SHARE


def _hash_share(conversation: list[dict]) -> float:
    question = "\n".join(str(message.get("content", "")) for message in conversation)
    return int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:4], "big") / 2**32


def _example(messages: list[dict], answer: str, extra: dict, facts: list[Fact]) -> dict:
    return {
        "messages": [*messages, {"role": "assistant", "content": answer}],
        **extra,
        "shown_facts": [fact.fact if fact.fact is not None else f"id{fact.id}" for fact in facts],
    }


def _inject(
    facts: list[Fact], right: Fact, conversation: list[dict], serving_settings, count_tokens, lang: str
) -> list[Fact]:
    """The right fact among the retrieved ones, at a position fixed by the question's hash,
    with distractors dropped (lowest first) until the block fits the token budget."""
    distractors = facts[: max(serving_settings.retrieval_top_k - 1, 0)]
    question = "\n".join(str(message.get("content", "")) for message in conversation)
    slot = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:4], "big") % (len(distractors) + 1)
    chosen = [*distractors[:slot], right, *distractors[slot:]]
    while len(chosen) > 1 and count_tokens(facts_block(chosen, lang)) > serving_settings.grounding_context_tokens:
        chosen.remove(next(fact for fact in reversed(chosen) if fact is not right))
    return chosen


def _knowledge_hash(db_path: Path) -> str:
    with Store(db_path) as store:
        return knowledge_hash(store)


def _write_folder(out_folder: Path, contents: dict[str, bytes], manifest: dict) -> None:
    """Written under a temporary name and renamed into place: a trainer never sees half of it."""
    out_folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".grounding-", dir=out_folder.parent))
    try:
        for name, data in contents.items():
            (staging / f"{name}.jsonl").write_bytes(data)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        if out_folder.exists():
            shutil.rmtree(out_folder)
        staging.rename(out_folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- python -m training ground [DATASET] -----------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training ground",
        description=("rewrite a built dataset with the prompts as served (retrieved facts included)"),
    )
    _configure_ground(parser)
    args = parse(parser, argv)
    return args if isinstance(args, int) else _ground(args)


def tokenizer_for(serving: InferenceSettings):
    """The serving model's tokenizer: prompts are bounded in its tokens, as when serving."""
    return load_base(serving.model_path, serving.home.models, serving.device, serving.cpu_dtype)[1]


def open_index(serving: InferenceSettings):
    return FactIndex(serving.home.database, serving.retrieval_min_score)


@guarded
def _ground(args: argparse.Namespace) -> int:
    serving = InferenceSettings.load()
    folder = Path(args.dataset) if args.dataset else latest_dataset()
    Store(serving.home.database).close()  # a fresh home gets its knowledge base seeded
    index = open_index(serving)
    try:
        result = ground_dataset(folder, Path(args.out) if args.out else None, index, serving, tokenizer_for(serving))
    except GroundingError as error:
        report(str(error))
        return EXIT_USAGE
    finally:
        index.close()
    if args.events:  # for the pipeline, which runs this as a child
        print(
            json.dumps(
                {
                    "event": "grounded",
                    "path": str(result.path),
                    "content_hash": result.content_hash,
                    "counts": result.manifest["counts"],
                }
            ),
            flush=True,
        )
        return 0
    counts = result.manifest["counts"]
    splits = result.manifest["splits"]
    print(
        f"{result.path}\n  {splits['train']['count']} train / {splits['valid']['count']} valid / "
        f"{splits['test']['count']} test; fact retrieved {counts['retrieved']}, injected "
        f"{counts['injected']}, declined {counts['declined']}, near misses {counts['near_miss']}, "
        f"unknown fact {counts['unknown_fact']}, skipped {counts['skipped']}; content {result.content_hash[:12]}"
    )
    return 0


def _configure_ground(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="a `python -m data build` folder (default: the latest)")
    parser.add_argument("--out", help="where to write (default: next to it, named after it and the facts)")
    parser.add_argument("--events", action="store_true", help="print the result as one JSON line (for the pipeline)")
