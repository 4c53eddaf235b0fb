"""The gate report in words: a verdict and one line per criterion, for the pipeline's message to
admins and `python -m training gate`; and each version's figures in one row, for `python -m training
adapters` and the bot's plot. Apart from the gate's measurement, so the bot can word a report
without importing MLX.
"""

from __future__ import annotations

from .messages import Note
from .registry import AdapterVersion


def describe(report: dict) -> str:
    """A few lines for people: the verdict, then one line per criterion with both values."""
    cand, champ = report["candidate"]["label"], report["champion"]["label"]
    verdict = f"{cand} vs {champ}: {'accepted' if report['accepted'] else 'rejected'}"
    return "\n".join([verdict, *map(criterion_line, report["criteria"])])


def criterion_line(row: dict) -> str:
    """'✓ val_loss: 10.6037 vs 11.2130; needs ≤ 11.1569 (champion − 0.5%)'"""
    return criterion_note(row).text("en")


def criterion_note(row: dict) -> Note:
    """A criterion for the pipeline's report; the rule is the gate's own words, kept as recorded."""
    return Note(
        "criterion",
        {
            "mark": "✓" if row["passed"] else "✗",
            "name": row["name"],
            "candidate": _format(row["candidate"], row["unit"]),
            "champion": _format(row["champion"], row["unit"]),
            "rule": row["rule"],
        },
    )


def _format(value, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "loss":
        return f"{value:.4f}"
    if unit == "share":
        return f"{value:.1%}"
    return str(value)


def version_figures(entry: AdapterVersion) -> dict:
    """A version's record and its gate figures in one flat row, so the adapters table, its JSON and
    the /status plot show the same numbers. Shares are of the gate's eval questions (0..1)."""
    gate = entry.gate or {}
    candidate = gate.get("candidate") or {}
    right, wrong = candidate.get("accuracy"), candidate.get("wrong_rate")
    return {
        "version": entry.version,
        "status": entry.status,
        "trigger": entry.trigger,
        "requested_by": entry.record.get("requested_by"),
        "created_at": entry.created_at,
        "run_id": entry.run_id,
        "dataset_hash": entry.dataset.get("content_hash"),
        "knowledge_hash": entry.dataset.get("knowledge_hash"),
        "train_examples": (entry.dataset.get("counts") or {}).get("train"),
        "training": entry.training.get("mode"),  # warm | full (training/lifecycle/warmstart.py)
        "training_reason": entry.training.get("reason"),
        "best_val_loss": entry.metrics.get("best_val_loss"),
        "gate": ("accepted" if gate.get("accepted") else "rejected") if gate else None,
        "gate_val_loss": candidate.get("val_loss"),
        "gate_accuracy": right,
        "gate_accuracy_by_lang": candidate.get("accuracy_by_lang"),
        # Every answer is right, declined or wrong (data.scorer), so the declines are the rest.
        "gate_declined_rate": 1 - right - wrong if right is not None and wrong is not None else None,
        "gate_wrong_rate": wrong,
        "gate_verdicts_by_lang": candidate.get("verdicts_by_lang"),
    }
