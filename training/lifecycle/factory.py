"""The factory adapter: the embedded default model ships with an adapter the project's own pipeline
trained on the seed corpus, so a fresh install's first answer already comes from a trained adapter.

It lives in training/factory/<model folder name>/ (the adapter files and factory.json: the hash of
the base weights it was trained on, the grounded dataset and knowledge base it saw, its training
metrics and basis (what a warm start continuing it must share), its gate report and its evaluation
figures). An empty registry takes it in as the first
version and promotes it, so every nightly candidate is gated against it.

Kept under version control rather than trained at install: training takes about an hour on a
2-core server, the files are a few MB, and factory.json holds the figures this very adapter
earned. `python -m training factory VERSION` writes the folder from a registered version. A base
model whose weights differ (another MODEL_PATH, another converter) gets no factory adapter: the bot
trains its first one right after start instead (bot/scheduler.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from common.files import read_json_object, sha256_file, write_atomic
from inference.adapters import CONFIG_FILE, WEIGHTS_FILE
from inference.modelstore import resolve_model
from inference.settings import InferenceSettings

from ..errors import EXIT_USAGE, guarded, parse, report
from .registry import AdapterVersion, Registry

log = logging.getLogger(__name__)

FACTORY_ROOT = Path(__file__).resolve().parent.parent / "factory"
MANIFEST = "factory.json"
WEIGHTS = "model.safetensors"  # the converted base model's weights, whose hash names what it fits
FACTORY_BY = "factory"


def model_folder(serving: InferenceSettings) -> Path | None:
    """The local folder of the configured base model (the embedded default is fetched and converted
    on first use); None for a hub id, which has no factory adapter."""
    resolved = Path(resolve_model(serving.model_path, serving.home.models))
    return resolved if resolved.is_dir() else None


def factory_adapter(base_folder: Path) -> Path | None:
    """The factory adapter folder for this base model, or None when none was trained on its weights."""
    folder = FACTORY_ROOT / base_folder.name
    manifest = read_json_object(folder / MANIFEST)
    if manifest is None or not (base_folder / WEIGHTS).is_file():
        return None
    if manifest.get("base_weights_sha256") != sha256_file(base_folder / WEIGHTS):
        log.warning(
            "the factory adapter %s was trained on other weights than %s: not using it", folder.name, base_folder
        )
        return None
    return folder


def install_factory_adapter(registry: Registry, base_folder: Path | None) -> AdapterVersion | None:
    """Register and promote the factory adapter when the registry has no version at all; None when
    it has one already or there is no factory adapter for this base model."""
    if base_folder is None or registry.versions():
        return None
    folder = factory_adapter(base_folder)
    if folder is None:
        return None
    manifest = read_json_object(folder / MANIFEST)
    entry = registry.add_candidate(
        folder,
        manifest=manifest.get("dataset"),
        metrics=manifest.get("metrics"),
        trigger=FACTORY_BY,
        requested_by=FACTORY_BY,
        training=manifest.get("training"),
    )
    registry.record_gate(entry.version, manifest.get("gate") or {}, True)
    promoted = registry.promote(
        entry.version, by=FACTORY_BY, reason="factory adapter: trained by the project's pipeline on the seed corpus"
    )
    log.info("installed the factory adapter for %s as %s", base_folder.name, promoted.version)
    return promoted


def write_factory_adapter(
    entry: AdapterVersion, base_folder: Path, evaluation: dict | None, root: Path = FACTORY_ROOT
) -> Path:
    """Write `entry` (a registered, gated version) as the factory adapter of `base_folder`'s model."""
    folder = root / base_folder.name
    folder.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copyfile(entry.path / name, folder / name)
    record = json.loads((entry.path / "version.json").read_text(encoding="utf-8"))
    gate = dict(record.get("gate") or {})
    gate.pop("answers", None)  # the per-question answers stay in the registry that ran the gate
    manifest = {
        "base_model": base_folder.name,
        "base_weights_sha256": sha256_file(base_folder / WEIGHTS),
        "from_version": entry.version,
        "run_id": record.get("run_id"),
        "dataset": _dataset_manifest(record),
        "metrics": record.get("metrics"),
        "training": record.get("training"),
        "gate": gate,
        "evaluation": evaluation,
    }
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    return folder


def evaluation_figures(saved: dict) -> dict:
    """The per-configuration figures of a `python -m training evaluate --save` file, without its
    per-question answers."""
    kept = (
        "accuracy",
        "accuracy_by_lang",
        "verdicts",
        "verdicts_by_lang",
        "ood_decline_rate",
        "counts",
        "declined",
        "guard_fired",
    )
    return {
        name: {key: figures.get(key) for key in kept} for name, figures in saved.items() if isinstance(figures, dict)
    }


def _dataset_manifest(record: dict) -> dict:
    """The registry's dataset record, in the shape Registry.add_candidate reads from a manifest."""
    dataset = record.get("dataset") or {}
    return {
        "content_hash": dataset.get("content_hash"),
        "created_at": dataset.get("created_at"),
        "splits": {name: {"count": count} for name, count in (dataset.get("counts") or {}).items()},
        "sources": dataset.get("sources"),
        "knowledge_hash": dataset.get("knowledge_hash"),
    }


# --- python -m training factory VERSION ------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training factory",
        description=("write a registered version as the factory adapter of the configured base model"),
    )
    parser.add_argument("version", help="e.g. v0001 (or just 1)")
    parser.add_argument(
        "--evaluation", metavar="FILE", help="a `python -m training evaluate --save` JSON whose figures to keep with it"
    )
    args = parse(parser, argv)
    return args if isinstance(args, int) else _factory(args)


@guarded
def _factory(args: argparse.Namespace) -> int:
    from .commands import open_registry

    evaluation = None
    if args.evaluation:
        try:
            evaluation = evaluation_figures(json.loads(Path(args.evaluation).read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            report(f"--evaluation {args.evaluation}: {error}")
            return EXIT_USAGE
    entry = open_registry().get(args.version)
    base_folder = model_folder(InferenceSettings.load())
    if base_folder is None:
        report("the configured MODEL_PATH is a hub id: a factory adapter belongs to a local model folder")
        return EXIT_USAGE
    folder = write_factory_adapter(entry, base_folder, evaluation)
    print(f"{entry.version} written as the factory adapter in {folder}")
    return 0
