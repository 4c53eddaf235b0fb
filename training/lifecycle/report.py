"""The gate report in words: a verdict and one line per criterion, for the pipeline's message to
admins and `python -m training gate`. Apart from the gate's measurement, so the bot can word a
report without importing MLX.
"""

from __future__ import annotations

from .messages import Note


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
