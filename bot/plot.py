"""The admins' /status plots as PNGs: the loss curve of the latest training run, and the gate's
answers per adapter version.

Both read what training left on disk ($FARENSE_HOME/runs/<id>/metrics.jsonl, the registry's
version.json files), so they show runs and versions the bot did not start. Matplotlib's Agg
backend draws without a display; callers run it in a thread.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from common.home import Home
from training.lifecycle.registry import PRODUCTION, REJECTED, RETIRED, AdapterVersion, Registry
from training.lifecycle.report import version_figures

log = logging.getLogger(__name__)

FIGURE_INCHES = (6.4, 4.0)
FIGURE_DPI = 100  # 640 × 400 pixels: readable in a Telegram chat without zooming
LANGUAGE_COLOURS = {"en": "tab:blue", "pt": "tab:green"}
SERVING_COLOUR = "gold"
PROMOTED_STATUSES = (PRODUCTION, RETIRED)  # a retired version was in production before


def latest_run(home: Home) -> Path | None:
    """The newest run folder with metrics (run ids start with their creation time)."""
    root = home.runs
    if not root.is_dir():
        return None
    runs = sorted((p for p in root.iterdir() if (p / "metrics.jsonl").is_file()), reverse=True)
    return runs[0] if runs else None


def read_losses(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, validation) as (step, loss) pairs; unreadable lines are skipped."""
    train, valid = [], []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        train_loss = record.get("train_loss", record.get("loss") if record.get("kind") == "train" else None)
        if isinstance(train_loss, (int, float)):
            train.append((step, float(train_loss)))
        if isinstance(record.get("val_loss"), (int, float)):
            valid.append((step, float(record["val_loss"])))
    return train, valid


def loss_plot(run_dir: Path) -> bytes | None:
    """PNG bytes of the run's train and validation loss, or None when it has no losses yet."""
    train, valid = read_losses(run_dir)
    if not train and not valid:
        return None
    figure, axes = _figure()
    for points, label, style in ((train, "train", "-"), (valid, "validation", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set(title=f"Loss — run {run_dir.name}", xlabel="step", ylabel="loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _png(figure)


@dataclass(frozen=True)
class GatePoint:
    """One column of the accuracy plot: a gated version, or the base model its first gate measured."""

    label: str  # v0003, or "base" for the base model
    trigger: str  # what started its training ("" for the base model or when not recorded)
    outcome: str  # promoted | rejected | not promoted | base
    serving: bool  # what production serves now
    right: dict[str, float]  # per language, share of the gate's questions
    wrong: dict[str, float]


def registered_versions(home: Home) -> list[AdapterVersion]:
    """The registry's versions, oldest first; [] when it cannot be read (/status reports that
    in its text)."""
    try:
        return Registry(home.root).versions()
    except (OSError, ValueError, KeyError) as error:
        log.warning("cannot read the adapter registry for the accuracy plot: %s", error)
        return []


def gate_points(versions: list[AdapterVersion]) -> list[GatePoint]:
    """The gated versions in order of training, after the base model when a gate measured it."""
    points = []
    base = _base_model(versions)
    if base is not None:
        serving = not any(entry.status == PRODUCTION for entry in versions)
        points.append(
            GatePoint("base", "", "base", serving, *_shares(base["accuracy_by_lang"], base.get("verdicts_by_lang")))
        )
    for entry in versions:
        figures = version_figures(entry)
        if not figures["gate_accuracy_by_lang"]:
            continue  # never gated, or its gate failed: no figures to show
        if entry.status in PROMOTED_STATUSES:
            outcome = "promoted"
        else:
            outcome = "rejected" if entry.status == REJECTED else "not promoted"
        shares = _shares(figures["gate_accuracy_by_lang"], figures["gate_verdicts_by_lang"])
        points.append(GatePoint(entry.version, entry.trigger or "", outcome, entry.status == PRODUCTION, *shares))
    return points


def accuracy_plot(versions: list[AdapterVersion]) -> bytes | None:
    """PNG bytes of the gate's right and wrong shares per language for every gated version, in
    order of training: promoted versions filled, rejected candidates crossed, the one in production
    shaded. None when no version has gate figures."""
    points = gate_points(versions)
    if not points:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    figure, axes = _figure()
    xs = range(len(points))
    for lang, colour in LANGUAGE_COLOURS.items():
        for shares, style in (("right", "-"), ("wrong", "--")):
            ys = [getattr(point, shares).get(lang, math.nan) for point in points]
            axes.plot(xs, ys, style, color=colour, alpha=0.7, label=f"{lang.upper()} {shares}")
            for x, y, point in zip(xs, ys, points, strict=True):
                axes.plot(x, y, linestyle="none", color=colour, **_MARKERS[point.outcome])
    for x, point in zip(xs, points, strict=True):
        if point.serving:
            axes.axvspan(x - 0.4, x + 0.4, color=SERVING_COLOUR, alpha=0.3, zorder=0, label="in production")
    axes.set_xticks(list(xs), [f"{p.label}\n{p.trigger}" for p in points], fontsize=8 if len(points) <= 8 else 7)
    for tick, point in zip(axes.get_xticklabels(), points, strict=True):
        if point.outcome == "rejected":
            tick.set_color("tab:red")
    axes.set(title="Gate answers per adapter version", ylabel="share of the gate's questions", ylim=(0, 1.08))
    axes.set_xlim(-0.6, len(points) - 0.4)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.grid(axis="y", alpha=0.3)
    outcomes = [o for o in _MARKERS if o != "base" and any(p.outcome == o for p in points)]
    handles = axes.get_legend_handles_labels()[0] + [
        Line2D([], [], linestyle="none", color="black", label=o, **_MARKERS[o]) for o in outcomes
    ]
    axes.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=4, fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.11, right=0.98, top=0.92, bottom=0.27)
    return _png(figure)


_MARKERS = {
    "promoted": {"marker": "o", "markersize": 7},
    "rejected": {"marker": "X", "markersize": 8, "markerfacecolor": "white"},
    "not promoted": {"marker": "o", "markersize": 7, "markerfacecolor": "white"},
    "base": {"marker": "s", "markersize": 6},
}


def _base_model(versions: list[AdapterVersion]) -> dict | None:
    """The bare base model's side of the earliest gate that measured it (one run while no adapter
    served), or None."""
    for entry in versions:
        champion = (entry.gate or {}).get("champion") or {}
        if "version" in champion and champion["version"] is None and champion.get("accuracy_by_lang"):
            return champion
    return None


def _shares(right_by_lang: dict, verdicts_by_lang: dict | None) -> tuple[dict[str, float], dict[str, float]]:
    """(right, wrong) per language; the wrong shares come from the verdicts, which older gate
    reports lack."""
    right = {lang: share for lang, share in right_by_lang.items() if share is not None}
    wrong = {lang: v["wrong"] for lang, v in (verdicts_by_lang or {}).items() if (v or {}).get("wrong") is not None}
    return right, wrong


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    return figure, figure.subplots()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
