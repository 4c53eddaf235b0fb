"""Answering held-out questions as served, and the four-configuration evaluation (issue 11).

`served_answers` is how the gate and `python -m training evaluate` answer a question: the prompt
comes from inference.grounding.build_grounded (retrieved facts in the system prompt) exactly as the
bot builds it, and when grounding declines, the decline text is the answer given (the bot does not
generate then either). Greedy decoding in batches, with the serving repetition penalty.

`evaluate_configs` scores base, base+retrieval, adapter and adapter+retrieval on one loaded base
model with data.scorer, so the table says what retrieval and the adapter each add.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.scorer import EvalReport, evaluate
from data.seed import EvalItem, OODItem
from inference.settings import InferenceSettings

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
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_logits_processors

    from inference.grounding import build_grounded
    from inference.prompts import render_prompt

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
    from inference.adapters import read_adapter
    from inference.grounding import FactIndex
    from inference.loading import load_base
    from inference.lora import apply_adapter, remove_adapter

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
