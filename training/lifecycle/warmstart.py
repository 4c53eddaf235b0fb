"""Warm or full: whether tonight's training continues the production adapter or starts afresh.

    full   there is no production adapter; or it was trained on another basis (`training_basis`):
           the base model's weights, the LoRA layout (layers, rank, scale, keys), the dataset or
           grounding format, the grounding settings, the seed corpus, or the knowledge the project
           ships (seed facts, their questions, the lexicon); or RETRAIN_MODE=full, `python -m
           training pipeline --full`, `/retrain full`
    warm   otherwise: the LoRA weights start from production's; the run trains on the curated
           examples newer than production's data (`curated_until`: the newest vote or correction
           it saw) plus a replay sample of the rest (seed and older curated examples), for a step
           budget proportional to the new examples; validation keeps the full dataset's split, so
           its losses compare with production's, and the gate is the same as ever
    warm   also when production's basis differs only in what the prompts show (formats, seed,
           shipped knowledge; not the base model or the LoRA layout) and the gate already refused a
           full run on tonight's basis: production is still the best adapter there is, a full run
           on the same basis every night would cost an hour to be refused again, and continuing
           production teaches it the new prompts through the replayed examples. Once promoted,
           such a candidate records tonight's basis, and the nights after are plainly warm.

The admins' own edits of the knowledge base do not force a full run: every /correct amends it and
comes with its training example, which a warm night learns; a new release of the seed facts, their
questions or the lexicon changes what every prompt shows, which an adapter has not learned to read.

Step budget: with N new examples, R = max(⌈WARM_REPLAY_RATIO × N⌉, ⌈WARM_MIN_STEPS × B / WARM_EPOCHS⌉ − N)
replayed ones (at most all the rest) and B examples a step,
    steps = clamp(⌈WARM_EPOCHS × (N + R) / B⌉, WARM_MIN_STEPS, WARM_MAX_STEPS)
so each example of the mix is seen about WARM_EPOCHS times, as in a full run (the factory adapter:
300 steps of 8 over 608 examples). A few new examples get more replay rather than more repeats
(the minimum of steps is filled with old examples, not by learning the new ones by heart); many
are cut at WARM_MAX_STEPS (the time budget wins; a night with that much new data may run --full).
The optimizer starts fresh (production's AdamW moments are not kept, and a finished run's are spent
at its smallest learning rate): a linear warmup over the first tenth of the steps, then the usual
cosine decay.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from common.files import fsync_tree, read_json_object, sha256_file
from data.builder import CURATED, MANIFEST, SOURCES, SPLITS, WARM_SUFFIX
from inference.lora_shapes import local_model_folder, lora_layout
from inference.modelstore import resolve_model
from inference.settings import InferenceSettings

from ..settings import TrainingSettings
from .messages import Note, listed
from .registry import REJECTED, AdapterVersion
from .settings import LifecycleSettings

WARM, FULL = "warm", "full"
WARMUP_SHARE = 0.1
PLAN_FILE = "training_plan.json"  # in the run folder, for a resumed run to be registered as planned
# the parts of a basis; a change of one reads as the note basis_<part> (messages.py)
BASIS_PARTS = ("base_model", "lora", "dataset_format", "grounding", "seed", "shipped_knowledge")
# parts an adapter can be continued across: they change the prompts, not the weights' shapes
CONTINUABLE_PARTS = ("dataset_format", "grounding", "seed", "shipped_knowledge")


@dataclass(frozen=True)
class TrainingPlan:
    mode: str  # WARM | FULL
    reason: Note
    basis: dict  # what the adapter is trained on (training_basis)
    curated_until: str | None  # the newest curated example its data holds
    dataset: Path | None = None  # what the run trains on; None when a warm night has nothing new
    content_hash: str | None = None  # of `dataset`
    start_version: str | None = None  # warm: the production version it continues
    start_adapter: Path | None = None
    new_examples: int = 0
    replay_examples: int = 0
    steps: int | None = None  # warm: the step budget (full: the training settings')
    warmup_steps: int | None = None
    learning_rate: float | None = None  # warm: WARM_LEARNING_RATE (None: the training settings')
    settings: dict = field(default_factory=dict)  # warm: the replay ratio, epochs and step bounds used

    @property
    def nothing_new(self) -> bool:
        return self.mode == WARM and self.new_examples == 0

    def run_flags(self) -> list[str]:
        """The `python -m training run` flags of this plan, placed after the configured ones (the
        last of a flag wins)."""
        flags = ["--dataset", str(self.dataset)]
        if self.mode == WARM:
            flags += ["--init-adapter", str(self.start_adapter), "--iters", str(self.steps)]
            flags += ["--warmup-steps", str(self.warmup_steps)]
            if self.learning_rate is not None:
                flags += ["--learning-rate", str(self.learning_rate)]
        return flags

    def record(self) -> dict:
        """What the registry keeps with the candidate (JSON): the reason in English, and as a note
        for the bot to word in each admin's language."""
        kept = {item.name: getattr(self, item.name) for item in fields(self)}
        return {
            name: str(value) if isinstance(value, Path) else value
            for name, value in kept.items()
            if name not in ("dataset", "content_hash", "reason")
        } | {"reason": self.reason.text("en"), "reason_note": self.reason.to_dict()}

    def summary(self) -> Note:
        return training_summary(self.record())


def plan_training(
    production: AdapterVersion | None,
    build_manifest: dict,
    dataset: Path,
    training: TrainingSettings,
    settings: LifecycleSettings,
    serving: InferenceSettings,
    *,
    force_full: Note | None = None,
    registered: Sequence[AdapterVersion] = (),
) -> TrainingPlan:
    """Tonight's plan. `dataset`: the built dataset, or its grounded copy when answers are served
    grounded; `force_full`: why a full run was asked for (None: decide); `registered`: the
    registry's versions, whose refused full runs on tonight's basis make the night warm."""
    manifest = read_json_object(dataset / MANIFEST) or {}
    basis = training_basis(build_manifest, manifest if manifest.get("parent") else None, training, serving)
    until = build_manifest.get("curated_until")
    reason = force_full or full_reason(production, basis)
    refused = None if force_full else refused_full_run(production, basis, registered)
    if reason is not None and refused is None:
        return TrainingPlan(FULL, reason, basis, until, dataset, manifest.get("content_hash"))
    since = production.training.get("curated_until")
    train = _lines((dataset / "train.jsonl").read_bytes())
    new = [line for line in train if _curated_after(line, since)]
    rest = [line for line in train if not _curated_after(line, since)]
    plan = TrainingPlan(
        WARM,
        Note("reason_full_refused", {"version": production.version, "refused": refused.version})
        if refused is not None
        else Note("reason_same_basis", {"version": production.version}),
        basis,
        until,
        start_version=production.version,
        start_adapter=production.path,
        new_examples=len(new),
        learning_rate=settings.warm_learning_rate,
        settings={
            "replay_ratio": settings.warm_replay_ratio,
            "epochs": settings.warm_epochs,
            "min_steps": settings.warm_min_steps,
            "max_steps": settings.warm_max_steps,
        },
    )
    if not new:
        return plan
    per_step = training.batch_size * training.grad_accumulation
    replay = _sample(rest, replay_count(len(new), len(rest), per_step, settings), new)
    steps = warm_steps(len(new) + len(replay), per_step, settings)
    folder, content_hash = _write_warm_dataset(dataset, manifest, new, replay, plan, steps)
    return replace(
        plan,
        dataset=folder,
        content_hash=content_hash,
        replay_examples=len(replay),
        steps=steps,
        warmup_steps=max(1, round(steps * WARMUP_SHARE)),
    )


def training_summary(record: dict) -> Note:
    """One line for the admins: how a run was trained (a TrainingPlan.record)."""
    if record.get("mode") == WARM:
        return Note(
            "warm_start",
            {
                "version": record.get("start_version"),
                "new": record.get("new_examples"),
                "replay": record.get("replay_examples"),
                "steps": record.get("steps"),
            },
        )
    reason = Note.from_dict(record["reason_note"]) if record.get("reason_note") else record.get("reason")
    return Note("full_training" if record.get("mode") == FULL else "training_unknown", {"reason": reason})


def replay_count(new: int, available: int, per_step: int, settings: LifecycleSettings) -> int:
    """How many old examples go with `new` new ones (module docstring)."""
    wanted = max(
        math.ceil(settings.warm_replay_ratio * new),
        math.ceil(settings.warm_min_steps * per_step / settings.warm_epochs) - new,
    )
    return min(available, wanted)


def warm_steps(examples: int, per_step: int, settings: LifecycleSettings) -> int:
    """Steps that show each of `examples` about WARM_EPOCHS times, within the bounds."""
    wanted = math.ceil(settings.warm_epochs * examples / per_step)
    return min(settings.warm_max_steps, max(settings.warm_min_steps, wanted))


def training_basis(
    build_manifest: dict, grounded_manifest: dict | None, training: TrainingSettings, serving: InferenceSettings
) -> dict:
    """What an adapter trained on this data with these settings depends on, beyond the examples."""
    folder = local_model_folder(resolve_model(serving.model_path, serving.home.models))
    num_layers, keys = lora_layout(folder, training.lora_layers)
    return {
        "base_model": base_model_identity(serving),
        "lora": {"num_layers": num_layers, "rank": training.lora_rank, "scale": training.lora_scale, "keys": keys},
        "dataset_format": build_manifest.get("format"),
        "grounding": None
        if grounded_manifest is None
        else {"format": grounded_manifest.get("format"), **(grounded_manifest.get("grounding") or {})},
        "seed": build_manifest.get("seed_hash"),
        "shipped_knowledge": build_manifest.get("shipped_knowledge_hash"),
    }


def base_model_identity(serving: InferenceSettings) -> dict:
    """The base model's name and the sha256 of its weight files: another model or another
    conversion of it has other weights."""
    reference = resolve_model(serving.model_path, serving.home.models)
    folder = local_model_folder(reference)
    weights = {path.name: sha256_file(path) for path in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}
    return {"name": Path(reference).name if Path(reference).exists() else reference, "weights": weights}


def full_reason(production: AdapterVersion | None, basis: dict) -> Note | None:
    """Why tonight must train from scratch, or None when production can be continued."""
    if production is None:
        return Note("reason_no_production")
    recorded = (production.training or {}).get("basis")
    if not recorded:
        return Note("reason_no_basis", {"version": production.version})
    changed = [Note(f"basis_{part}") for part in BASIS_PARTS if recorded.get(part) != basis.get(part)]
    if changed:
        return Note("reason_basis_changed", {"parts": listed(changed), "version": production.version})
    return None


def refused_full_run(
    production: AdapterVersion | None, basis: dict, registered: Sequence[AdapterVersion]
) -> AdapterVersion | None:
    """The newest full run on `basis`, registered after production, that the gate refused, when
    production differs from `basis` only in parts it can be continued across; else None."""
    recorded = (production.training or {}).get("basis") if production is not None else None
    if not recorded or any(
        recorded.get(part) != basis.get(part) for part in BASIS_PARTS if part not in CONTINUABLE_PARTS
    ):
        return None
    refused = [
        version
        for version in registered
        if version.version > production.version
        and version.status == REJECTED
        and version.training.get("mode") == FULL
        and version.training.get("basis") == basis
    ]
    return max(refused, key=lambda version: version.version, default=None)


def _curated_after(line: bytes, since: str | None) -> bool:
    record = json.loads(line)
    return record.get("source") in CURATED and (since is None or str(record.get("created_at", "")) > since)


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.splitlines() if line.strip()]


def _sample(rest: list[bytes], count: int, new: list[bytes]) -> list[bytes]:
    """`count` of `rest`, in their order, drawn with a seed taken from the new examples: the same
    night rebuilt gives the same dataset (a rejected one is not trained again, pipeline.py)."""
    seed = int.from_bytes(hashlib.sha256(b"\n".join(new)).digest()[:8], "big")
    chosen = sorted(random.Random(seed).sample(range(len(rest)), count))
    return [rest[index] for index in chosen]


def _write_warm_dataset(
    parent: Path, parent_manifest: dict, new: list[bytes], replay: list[bytes], plan: TrainingPlan, steps: int
) -> tuple[Path, str]:
    """The warm run's dataset beside its parent: train = new + replay, valid and test as the
    parent's. Named after its content, and kept as it is when already there."""
    contents = {"train": b"".join(line + b"\n" for line in [*new, *replay])}
    contents |= {
        name: (parent / f"{name}.jsonl").read_bytes() for name in SPLITS[1:] if (parent / f"{name}.jsonl").is_file()
    }
    hashes = {name: hashlib.sha256(contents.get(name, b"")).hexdigest() for name in SPLITS}
    content_hash = hashlib.sha256("".join(f"{name}:{hashes[name]}\n" for name in SPLITS).encode("ascii")).hexdigest()
    folder = parent.parent / f"{parent.name}{WARM_SUFFIX}-{content_hash[:12]}"
    if (read_json_object(folder / MANIFEST) or {}).get("content_hash") == content_hash:
        return folder, content_hash
    sources = Counter(json.loads(line).get("source", "extra") for line in [*new, *replay])
    manifest = {
        "content_hash": content_hash,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parent": {"path": str(parent), "content_hash": parent_manifest.get("content_hash")},
        "splits": {name: {"count": len(_lines(contents.get(name, b""))), "sha256": hashes[name]} for name in SPLITS},
        "sources": {source: sources[source] for source in SOURCES},
        "warm": {
            "start_version": plan.start_version,
            "new_examples": len(new),
            "replay_examples": len(replay),
            "steps": steps,
            **plan.settings,
        },
    }
    staging = Path(tempfile.mkdtemp(prefix=".warm-", dir=parent.parent))
    try:
        for name, data in contents.items():
            (staging / f"{name}.jsonl").write_bytes(data)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        fsync_tree(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder, content_hash
