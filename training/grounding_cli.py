"""`python -m training ground` and `python -m training evaluate`: grounded data and the four-way table.

    ground [DATASET] [--out FOLDER]     write the grounded copy of a built dataset (default: the latest)
    evaluate [--adapter V|PATH] [--limit N] [--configs ...] [--save FILE]
                                        held-out accuracy of base / base+retrieval / adapter /
                                        adapter+retrieval, EN and PT, plus out-of-domain declines
Exit codes as the other commands: 0 done, 1 failure, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inference.settings import InferenceSettings

from .lifecycle_cli import _guarded


def tokenizer_for(serving: InferenceSettings):
    """The serving model's tokenizer: prompts are bounded in its tokens, as when serving."""
    from inference.loading import load_base

    return load_base(serving.model_path, serving.models_root, serving.device, serving.cpu_dtype)[1]


def open_index(serving: InferenceSettings):
    from inference.grounding import FactIndex

    return FactIndex(serving.database_file, serving.retrieval_min_score)


@_guarded
def _ground(args: argparse.Namespace) -> int:
    from .grounding import GroundingError, ground_dataset
    from .job import _latest_dataset

    serving = InferenceSettings.load()
    folder = Path(args.dataset) if args.dataset else _latest_dataset()
    index = open_index(serving)
    try:
        result = ground_dataset(folder, Path(args.out) if args.out else None, index, serving,
                                tokenizer_for(serving))
    except GroundingError as error:
        print(f"training: error: {error}", file=sys.stderr)
        return 2
    finally:
        index.close()
    if args.events:  # for the pipeline, which runs this as a child
        print(json.dumps({"event": "grounded", "path": str(result.path), "content_hash": result.content_hash,
                          "counts": result.manifest["counts"]}), flush=True)
        return 0
    counts = result.manifest["counts"]
    splits = result.manifest["splits"]
    print(f"{result.path}\n  {splits['train']['count']} train / {splits['valid']['count']} valid / "
          f"{splits['test']['count']} test; fact retrieved {counts['retrieved']}, injected "
          f"{counts['injected']}, declined {counts['declined']}, unknown fact {counts['unknown_fact']}, "
          f"skipped {counts['skipped']}; content {result.content_hash[:12]}")
    return 0


@_guarded
def _evaluate(args: argparse.Namespace) -> int:
    from data.seed import load_eval, load_ood
    from data.settings import DataSettings

    from .evaluate import CONFIGS, evaluate_configs, table
    from .gate import gate_items
    from .lifecycle_cli import _registry
    from .lifecycle_settings import LifecycleSettings

    serving = InferenceSettings.load()
    configs = [name.strip() for name in args.configs.split(",") if name.strip()] if args.configs else list(CONFIGS)
    adapter = _adapter_folder(args.adapter, _registry())
    seed_dir, problems = DataSettings.load().seed_dir, []
    items, ood = load_eval(seed_dir, problems), load_ood(seed_dir, problems)
    if args.limit:
        items = gate_items(items, args.limit)
    if not items:
        print(f"training: error: no held-out eval items in {seed_dir}", file=sys.stderr)
        return 2
    if adapter is None:
        configs = [name for name in configs if not name.startswith("adapter")]
        print("note: no adapter given and none in production: base configurations only", file=sys.stderr)
    max_tokens = args.max_tokens or LifecycleSettings.load().gate_max_tokens
    try:
        results = evaluate_configs(configs, adapter, items, ood, serving, max_tokens)
    except ValueError as error:
        print(f"training: error: {error}", file=sys.stderr)
        return 2
    if args.save:
        Path(args.save).write_text(json.dumps(
            {name: {"declined": r["declined"], "seconds": r["seconds"], **r["report"].to_dict()}
             for name, r in results.items()}, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"{len(items)} held-out items ({sum(i.lang == 'en' for i in items)} EN, "
          f"{sum(i.lang == 'pt' for i in items)} PT), {len(ood)} out-of-domain probes; adapter "
          f"{adapter or 'none'}; greedy, {max_tokens} tokens\n{table(results)}")
    return 0


def _adapter_folder(given: str | None, registry) -> Path | None:
    """--adapter as a registered version (v0003, 3) or a folder; without it, production's."""
    if not given:
        production = registry.production()
        return production.path if production else None
    if Path(given).expanduser().is_dir():
        return Path(given).expanduser()
    return registry.get(given).path


def _configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", help="registered version or adapter folder (default: production)")
    parser.add_argument("--limit", type=int, help="a language-balanced subset of N held-out items")
    parser.add_argument("--configs", help="comma-separated, default: base,base+retrieval,adapter,adapter+retrieval")
    parser.add_argument("--max-tokens", type=int, help="answer length cap (default GATE_MAX_TOKENS)")
    parser.add_argument("--save", metavar="FILE", help="also write the full reports, every answer, as JSON")


def _configure_ground(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", help="a `python -m data build` folder (default: the latest)")
    parser.add_argument("--out", help="where to write (default: next to it, named after it and the facts)")
    parser.add_argument("--events", action="store_true", help="print the result as one JSON line (for the pipeline)")


GROUNDING_SUBCOMMANDS = {
    "ground": ("rewrite a built dataset with the prompts as served (retrieved facts included)",
               _configure_ground, _ground),
    "evaluate": ("held-out accuracy of base, base+retrieval, adapter and adapter+retrieval, EN and PT",
                 _configure_evaluate, _evaluate),
}
