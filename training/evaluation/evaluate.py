"""Answering held-out questions as served, and the four-configuration evaluation.

`served_answers` is how the gate and `python -m training evaluate` answer a question: the prompt
comes from inference.grounding.build_grounded (retrieved facts in the system prompt) exactly as the
bot builds it, and when grounding declines, the decline text is the answer given (the bot does not
generate then either). Greedy decoding in batches, with the serving repetition penalty.

`evaluate_configs` scores base, base+retrieval, adapter and adapter+retrieval on one loaded base
model with data.scorer, so the table says what retrieval and the adapter each add.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlx_lm.generate import batch_generate
from mlx_lm.sample_utils import make_logits_processors

from data.scorer import EvalReport, evaluate
from data.seed import EvalItem, OODItem, load_eval, load_ood
from data.settings import DataSettings
from inference.adapters import read_adapter
from inference.grounding import FactIndex, build_grounded
from inference.loading import load_base
from inference.lora import apply_adapter, remove_adapter
from inference.prompts import render_prompt
from inference.settings import InferenceSettings

from ..errors import EXIT_USAGE, guarded, parse, report
from ..lifecycle.commands import open_registry
from ..lifecycle.settings import LifecycleSettings

CONFIGS = ("base", "base+retrieval", "adapter", "adapter+retrieval")


@dataclass(frozen=True)
class Answer:
    text: str
    declined: bool  # grounding found nothing: the decline text was given without generating
    facts: tuple[int | None, ...]  # seed numbers of the facts in the prompt
    prompt: list[dict]  # the messages the model saw (or would have)


def served_answers(model, tokenizer, questions: Sequence[str], serving: InferenceSettings, index,
                   *, grounded: bool, max_tokens: int) -> list[Answer]:
    """Greedy answers to single-turn questions, prompts built as the bot builds them.

    `grounded` False (or index None) is the model alone: the configured system prompt, no facts.
    """
    settings = serving.model_copy(update={"grounding": grounded})

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text))

    groundings = [build_grounded([{"role": "user", "content": question}], index if grounded else None,
                                 settings, count_tokens) for question in questions]
    todo = [i for i, grounding in enumerate(groundings) if grounding.decline is None]
    texts: dict[int, str] = {}
    if todo:
        prompts = [render_prompt(tokenizer, groundings[i].messages, serving.system_prompt) for i in todo]
        generated = batch_generate(model, tokenizer, prompts, max_tokens=max_tokens,
                                   logits_processors=make_logits_processors(
                                       repetition_penalty=serving.repetition_penalty)).texts
        texts = dict(zip(todo, generated, strict=True))
    return [Answer(texts[i] if g.decline is None else g.decline, g.decline is not None,
                   tuple(fact.fact for fact in g.facts), g.messages) for i, g in enumerate(groundings)]


def score(answers: dict[str, Answer], items: Sequence[EvalItem], ood: Sequence[OODItem]) -> EvalReport:
    """data.scorer's report over answers keyed by question."""
    return evaluate(lambda question, _lang: answers[question].text, list(items), list(ood))


def evaluate_configs(configs: Sequence[str], adapter: Path | None, items: Sequence[EvalItem],
                     ood: Sequence[OODItem], serving: InferenceSettings, max_tokens: int) -> dict[str, dict]:
    """{config: {"report": EvalReport, "declined": n, "seconds": s}} on one base-model load."""
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if adapter is None and any(name.startswith("adapter") for name in configs):
        raise ValueError("the adapter configurations need an adapter: --adapter VERSION|PATH, or a production one")
    model, tokenizer, _info = load_base(serving.model_path, serving.models_root, serving.device,
                                        serving.cpu_dtype)
    index = FactIndex(serving.database_file, serving.retrieval_min_score)
    questions = [item.question for item in items] + [probe.question for probe in ood]
    results = {}
    try:
        for name in configs:
            started = time.perf_counter()
            remove_adapter(model)
            if name.startswith("adapter"):
                apply_adapter(model, read_adapter(adapter, str(adapter)))
            model.eval()
            answers = served_answers(model, tokenizer, questions, serving, index,
                                     grounded=name.endswith("retrieval"), max_tokens=max_tokens)
            by_question = dict(zip(questions, answers, strict=True))
            results[name] = {"report": score(by_question, items, ood),
                             "declined": sum(answer.declined for answer in answers[: len(items)]),
                             "seconds": round(time.perf_counter() - started, 1)}
    finally:
        remove_adapter(model)
        index.close()
    return results


def table(results: dict[str, dict]) -> str:
    """One row per configuration: accuracy and key-fact recall per language, OOD declines."""
    header = (f"{'configuration':<20}{'acc EN':>8}{'acc PT':>8}{'acc':>8}{'keys EN':>9}{'keys PT':>9}"
              f"{'keys':>8}{'OOD decl':>10}{'declined':>10}{'secs':>8}")
    rows = [header, "-" * len(header)]
    for name, result in results.items():
        report = result["report"]
        keys = {lang: _recall(report, lang) for lang in ("en", "pt")}
        rows.append(f"{name:<20}{_pct(report.accuracy_by_lang.get('en')):>8}"
                    f"{_pct(report.accuracy_by_lang.get('pt')):>8}{_pct(report.accuracy):>8}"
                    f"{_pct(keys['en']):>9}{_pct(keys['pt']):>9}{_pct(report.key_fact_recall):>8}"
                    f"{_pct(report.ood_decline_rate):>10}{result['declined']:>10}{result['seconds']:>8.0f}")
    return "\n".join(rows)


def _recall(report: EvalReport, lang: str) -> float | None:
    groups = [matched for item in report.items if item.lang == lang for matched in item.matched_groups]
    return sum(groups) / len(groups) if groups else None


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


# --- python -m training evaluate -----------------------------------------------------------------

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m training evaluate", description=(
        "held-out accuracy of base, base+retrieval, adapter and adapter+retrieval, EN and PT, plus "
        "out-of-domain declines"))
    _configure_evaluate(parser)
    args = parse(parser, argv)
    return args if isinstance(args, int) else _evaluate(args)


@guarded
def _evaluate(args: argparse.Namespace) -> int:
    from .gate import gate_items  # gate imports this module

    serving = InferenceSettings.load()
    configs = [name.strip() for name in args.configs.split(",") if name.strip()] if args.configs else list(CONFIGS)
    adapter = _adapter_folder(args.adapter, open_registry())
    seed_dir, problems = DataSettings.load().seed_dir, []
    items, ood = load_eval(seed_dir, problems), load_ood(seed_dir, problems)
    if args.limit:
        items = gate_items(items, args.limit)
    if not items:
        report(f"no held-out eval items in {seed_dir}")
        return EXIT_USAGE
    if adapter is None:
        configs = [name for name in configs if not name.startswith("adapter")]
        print("note: no adapter given and none in production: base configurations only", file=sys.stderr)
    max_tokens = args.max_tokens or LifecycleSettings.load().gate_max_tokens
    try:
        results = evaluate_configs(configs, adapter, items, ood, serving, max_tokens)
    except ValueError as error:
        report(str(error))
        return EXIT_USAGE
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
