"""The loss curve of the latest training run as a PNG, for the admins' /status.

Reads the run folders directly ($FARENSE_HOME/runs/<id>/metrics.jsonl), so it works for runs the
bot did not start. Matplotlib's Agg backend draws without a display; callers run it in a thread.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from common.home import Home

log = logging.getLogger(__name__)


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
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    train, valid = read_losses(run_dir)
    if not train and not valid:
        return None
    figure = Figure(figsize=(6.4, 4), dpi=100)
    axes = figure.subplots()
    for points, label, style in ((train, "train", "-"), (valid, "validation", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set(title=f"Loss — run {run_dir.name}", xlabel="step", ylabel="loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
