"""The promotion gate: a candidate adapter against the champion (production, or the bare base model).

Both are measured in one process on one base-model load, swapping adapters in between, on the same
inputs: the candidate run's frozen validation batches (same batch size and sequence length as in
training, from its grounded dataset) and a fixed, language-balanced subset of the seed's dev eval
questions (the held-out set stays unseen by every automatic choice), answered greedily in the served
configuration: prompts built by inference.grounding.build_grounded with the retrieved facts
(GROUNDING on), a decline counted as the answer given, and what the bot sends scored (ANSWER_FROM:
the quoted fact, or the guarded answer; evaluation/evaluate.py `served_answers`). Each answer is
right, declined or wrong (data.scorer); a wrong answer misleads a fan where a decline does not,
so the wrong share has its own criterion.
The candidate passes only if every criterion holds:

    val_loss            candidate ≤ champion × (1 − GATE_MIN_IMPROVEMENT)       (relative gain)
    champion_val_loss   candidate ≤ champion × (1 + GATE_MAX_REGRESSION)        on the champion run's
                        validation batches: a candidate's own validation split comes from the data it
                        was trained on, so bad data would judge itself; the champion's split is the
                        reference it must not fall behind
    accuracy            candidate ≥ champion − GATE_ALLOWED_ACCURACY_DROP       (absolute, 0..1)
    wrong_rate          candidate ≤ champion + GATE_ALLOWED_WRONG_RISE          (absolute, 0..1)
    adapter_loads       the adapter applies: files parse, tensors fit, weights are finite
    finite_val_loss     no NaN/inf loss
    degenerate_answers  share of empty or repetitive answers ≤ max(GATE_MAX_DEGENERATE, champion's)

The report lists every criterion with both values and the rule, so an admin sees why.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import zlib
from collections import Counter
from pathlib import Path

from data.scorer import evaluate
from data.seed import LANGS, EvalItem, load_eval
from data.settings import DataSettings
from inference.adapters import AdapterError, read_adapter
from inference.faithfulness import KEPT
from inference.grounding import FactIndex
from inference.layout import ModelLayout
from inference.loading import load_base
from inference.lora import apply_adapter, remove_adapter
from inference.settings import InferenceSettings

from ..errors import UsageError, guarded, parse
from ..lifecycle.commands import open_registry
from ..lifecycle.registry import Registry
from ..lifecycle.report import describe
from ..lifecycle.settings import LifecycleSettings
from ..runs import Run
from ..trainer.launch import run_valid_batches
from ..trainer.loop import validation_loss
from .evaluate import served_answers

BASE_LABEL = "base model"
GATE_SPLIT = "dev"
MIN_CHARS_FOR_RATIO = 40  # zlib's overhead makes shorter texts look incompressible
MAX_COMPRESSION_RATIO = 2.4  # Whisper's threshold for looping output; normal prose is ~1.2-1.8
MAX_NGRAM_REPEATS = 3  # a word 3-gram said 4 times in one short answer is a loop


class GateError(UsageError, RuntimeError):
    """The gate cannot run: no validation data, no eval items, a champion that does not load."""


def gate_version(
    registry: Registry,
    version: str,
    *,
    settings: LifecycleSettings | None = None,
    serving: InferenceSettings | None = None,
) -> dict:
    """Gate a registered version against production, record the report in the registry, return it."""
    settings = settings or LifecycleSettings.load()
    serving = serving or InferenceSettings.load()
    candidate = registry.get(version)
    champion = registry.production()
    if champion is not None and champion.version == candidate.version:
        raise GateError(f"{candidate.version} is in production: there is nothing to compare it with")
    if candidate.run_dir is None or not (candidate.run_dir / "config.json").is_file():
        raise GateError(
            f"{candidate.version}: its training run ({candidate.run_dir or 'none recorded'}) is "
            "gone, and the gate needs that run's validation batches"
        )
    problems: list = []
    items = gate_items(load_eval(DataSettings.load().seed_dir, problems, GATE_SPLIT), settings.gate_eval_limit)
    if not items:
        raise GateError(f"no {GATE_SPLIT} eval items in SEED_DIR ({'; '.join(map(str, problems[:3]))})")
    # The champion's own batches, while its run and dataset are kept (retention and /forget delete them).
    reference = (
        champion.run_dir
        if champion is not None
        and champion.run_dir is not None
        and champion.run_dir != candidate.run_dir
        and _valid_set_kept(champion.run_dir)
        else None
    )
    report = compare(
        candidate.path,
        candidate.version,
        champion.path if champion else None,
        champion.version if champion else None,
        run_dir=candidate.run_dir,
        items=items,
        settings=settings,
        serving=serving,
        reference_run=reference,
    )
    registry.record_gate(candidate.version, report, report["accepted"])
    return report


def gate_items(items: list[EvalItem], limit: int) -> list[EvalItem]:
    """A fixed subset: half per language (the other fills in when one runs short), evenly spread
    over each language's items sorted by id, so every fact range is represented."""
    pools = {lang: sorted((i for i in items if i.lang == lang), key=lambda i: i.id) for lang in LANGS}
    quota = {lang: min(len(pools[lang]), limit // len(LANGS)) for lang in LANGS}
    for lang in LANGS:  # give what one language lacks to the others
        quota[lang] = min(len(pools[lang]), limit - sum(q for other, q in quota.items() if other != lang))
    chosen = [pools[lang][i * len(pools[lang]) // quota[lang]] for lang in LANGS for i in range(quota[lang])]
    return sorted(chosen, key=lambda i: i.id)


def degenerate(text: str) -> str | None:
    """'empty' or 'repetitive' for an answer nobody should get, else None."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    data = stripped.encode("utf-8")
    if len(data) >= MIN_CHARS_FOR_RATIO and len(data) / len(zlib.compress(data)) > MAX_COMPRESSION_RATIO:
        return "repetitive"
    words = stripped.lower().split()
    grams = Counter(zip(words, words[1:], words[2:]))
    if grams and max(grams.values()) > MAX_NGRAM_REPEATS:
        return "repetitive"
    return None


def compare(
    candidate: Path,
    candidate_label: str,
    champion: Path | None,
    champion_label: str | None,
    *,
    run_dir: Path,
    items: list[EvalItem],
    settings: LifecycleSettings,
    serving: InferenceSettings,
    reference_run: Path | None = None,
) -> dict:
    """Measure champion then candidate on one loaded base model; returns the report.
    `reference_run`: the champion's training run, whose validation batches both are also measured on."""
    started = time.perf_counter()
    model, tokenizer, info = load_base(serving.model_path, serving.home.models, serving.device, serving.cpu_dtype)
    batches = run_valid_batches(run_dir, tokenizer)
    reference = run_valid_batches(reference_run, tokenizer) if reference_run is not None else None
    index = FactIndex(serving.home.database, serving.retrieval_min_score) if serving.grounding else None
    try:
        champ = _measure(
            model, tokenizer, info.layout, champion, champion_label, batches, items, settings, serving, index, reference
        )
        if champ["error"]:
            raise GateError(f"the production adapter {champion_label} cannot be measured: {champ['error']}")
        cand = _measure(
            model,
            tokenizer,
            info.layout,
            candidate,
            candidate_label,
            batches,
            items,
            settings,
            serving,
            index,
            reference,
        )
    finally:
        if index is not None:
            index.close()
    criteria = _criteria(cand, champ, settings)
    answers = [
        {
            "id": item.id,
            "lang": item.lang,
            "question": item.question,
            "candidate": cand["answers"].get(item.id),
            "champion": champ["answers"].get(item.id),
            "candidate_passed": cand["passed"].get(item.id),
            "champion_passed": champ["passed"].get(item.id),
            "facts": cand["facts"].get(item.id),
        }
        for item in items
    ]
    for side in (cand, champ):
        del side["answers"], side["passed"], side["facts"]
    return {
        "candidate": cand,
        "champion": champ,
        "criteria": criteria,
        "accepted": all(c["passed"] for c in criteria),
        "settings": {
            "min_improvement": settings.gate_min_improvement,
            "allowed_accuracy_drop": settings.gate_allowed_accuracy_drop,
            "allowed_wrong_rise": settings.gate_allowed_wrong_rise,
            "eval_limit": settings.gate_eval_limit,
            "max_tokens": settings.gate_max_tokens,
            "max_degenerate": settings.gate_max_degenerate,
            "max_regression": settings.gate_max_regression,
        },
        "grounding": serving.grounding,
        "base_model": info.model_id,
        "run_dir": str(run_dir),
        "valid_batches": len(batches),
        "reference_run": str(reference_run) if reference_run else None,
        "eval_items": len(items),
        "seconds": round(time.perf_counter() - started, 1),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "answers": answers,
    }


def _measure(
    model,
    tokenizer,
    layout: ModelLayout,
    folder: Path | None,
    label: str | None,
    batches,
    items: list[EvalItem],
    settings: LifecycleSettings,
    serving: InferenceSettings,
    index=None,
    reference=None,
) -> dict:
    """Validation loss and served answers with `folder`'s adapter (None = bare base model) applied."""
    result = {
        "version": label,
        "label": label or BASE_LABEL,
        "error": None,
        "val_loss": None,
        "champion_val_loss": None,
        "accuracy": None,
        "accuracy_by_lang": None,
        "key_fact_recall": None,
        "wrong_rate": None,
        "verdicts_by_lang": None,
        "guard_fired": None,
        "empty": None,
        "repetitive": None,
        "degenerate_share": None,
        "declined": None,
        "answers": {},
        "passed": {},
        "facts": {},
    }
    remove_adapter(model)
    if folder is not None:
        try:
            apply_adapter(model, read_adapter(folder, label), layout)
        except (AdapterError, ValueError, OSError) as error:
            remove_adapter(model)
            result["error"] = str(error)
            return result
    model.eval()
    result["val_loss"] = validation_loss(model, batches)
    if reference is not None:
        result["champion_val_loss"] = validation_loss(model, reference)
    answers = served_answers(
        model,
        tokenizer,
        [item.question for item in items],
        serving,
        index,
        grounded=index is not None,
        max_tokens=settings.gate_max_tokens,
        label=f"gate {result['label']}",
    )
    texts = [answer.text for answer in answers]
    sent = {item.question: answer.sent(serving) for item, answer in zip(items, answers, strict=True)}
    report = evaluate(lambda question, _lang: sent[question], items, ood_items=[])
    kinds = Counter(degenerate(text) for text in texts)
    result.update(
        accuracy=report.accuracy,
        accuracy_by_lang=report.accuracy_by_lang,
        key_fact_recall=report.key_fact_recall,
        wrong_rate=report.wrong_rate,
        verdicts_by_lang={lang: report.verdicts(lang) for lang in LANGS},
        guard_fired=sum(answer.guard != KEPT for answer in answers),
        empty=kinds["empty"],
        repetitive=kinds["repetitive"],
        degenerate_share=(kinds["empty"] + kinds["repetitive"]) / len(texts),
        declined=sum(answer.declined for answer in answers),
        answers={item.id: sent[item.question] for item in items},
        passed={r.id: r.passed for r in report.items},
        facts={item.id: list(answer.facts) for item, answer in zip(items, answers, strict=True)},
    )
    return result


def _criteria(cand: dict, champ: dict, settings: LifecycleSettings) -> list[dict]:
    rows = []

    def add(name: str, kind: str, unit: str, rule: str, passed: bool, key: str) -> None:
        rows.append(
            {
                "name": name,
                "kind": kind,
                "unit": unit,
                "candidate": cand[key],
                "champion": champ[key],
                "rule": rule,
                "passed": bool(passed),
            }
        )

    loss, best = cand["val_loss"], champ["val_loss"]
    limit = best * (1 - settings.gate_min_improvement) if _finite(best) else None
    add(
        "val_loss",
        "quality",
        "loss",
        f"≤ {limit:.4f} (champion − {settings.gate_min_improvement:.1%})" if limit is not None else "finite",
        _finite(loss) and (limit is None or loss <= limit),
        "val_loss",
    )
    if _finite(champ["champion_val_loss"]):
        ceiling = champ["champion_val_loss"] * (1 + settings.gate_max_regression)
        add(
            "champion_val_loss",
            "quality",
            "loss",
            f"≤ {ceiling:.4f} (champion + {settings.gate_max_regression:.1%}, on its own validation batches)",
            _finite(cand["champion_val_loss"]) and cand["champion_val_loss"] <= ceiling,
            "champion_val_loss",
        )
    floor = (champ["accuracy"] or 0.0) - settings.gate_allowed_accuracy_drop
    add(
        "accuracy",
        "quality",
        "share",
        f"≥ {max(floor, 0.0):.1%} (champion − {settings.gate_allowed_accuracy_drop:.1%})",
        cand["accuracy"] is not None and cand["accuracy"] >= floor - 1e-9,
        "accuracy",
    )
    ceiling = (champ["wrong_rate"] or 0.0) + settings.gate_allowed_wrong_rise
    add(
        "wrong_rate",
        "quality",
        "share",
        f"≤ {min(ceiling, 1.0):.1%} (champion + {settings.gate_allowed_wrong_rise:.1%})",
        cand["wrong_rate"] is not None and cand["wrong_rate"] <= ceiling + 1e-9,
        "wrong_rate",
    )
    rows.append(
        {
            "name": "adapter_loads",
            "kind": "sanity",
            "unit": "text",
            "candidate": cand["error"] or "ok",
            "champion": champ["error"] or "ok",
            "rule": "files parse, tensors fit the base model, weights finite",
            "passed": cand["error"] is None,
        }
    )
    add("finite_val_loss", "sanity", "loss", "not NaN or infinite", _finite(loss), "val_loss")
    allowed = max(settings.gate_max_degenerate, champ["degenerate_share"] or 0.0)
    add(
        "degenerate_answers",
        "sanity",
        "share",
        f"≤ {allowed:.1%} empty or repetitive",
        cand["degenerate_share"] is not None and cand["degenerate_share"] <= allowed + 1e-9,
        "degenerate_share",
    )
    return rows


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


# --- python -m training gate VERSION -------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training gate",
        description="compare a version with production on validation loss and eval questions",
    )
    parser.add_argument("version", help="e.g. v0003 (or just 3)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parse(parser, argv)
    return args if isinstance(args, int) else _gate(args)


@guarded
def _gate(args: argparse.Namespace) -> int:
    report = gate_version(open_registry(), args.version)
    print(json.dumps(report, indent=2, default=str) if args.json else describe(report))
    return 0


def _valid_set_kept(run_dir: Path) -> bool:
    valid = Run(run_dir).valid_set()
    return valid is not None and valid.is_file()
