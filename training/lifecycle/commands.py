"""The MLX-free commands: `python -m training promote|rollback|adapters|pipeline|status`.

Each takes its argv and returns the exit code (training/errors.py); training/cli.py dispatches to them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time

from common.progress import Progress, clock
from inference.settings import InferenceSettings

from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, guarded, parse, report
from ..runs import all_runs, is_resumable, pid_alive
from .pipeline import run_pipeline
from .registry import PRODUCTION, REJECTED, Registry
from .report import version_figures
from .settings import LifecycleSettings


def open_registry() -> Registry:
    return Registry(InferenceSettings.load().farense_home, keep=LifecycleSettings.load().keep_adapters)


def _who(args: argparse.Namespace) -> str:
    """--by, else the login name (recorded in history.jsonl)."""
    if args.by:
        return args.by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown user"


def _add_who(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument("--by", help="who is doing it (default: your user name)")
    parser.add_argument("--reason", default=f"manual {action}", help="why, for history.jsonl")


@guarded
def _promote(args: argparse.Namespace) -> int:
    registry = open_registry()
    before = registry.production()
    entry = registry.get(args.version)
    if entry.status == REJECTED:
        print(f"note: {entry.version} was rejected by the gate; promoting it anyway", file=sys.stderr)
    promoted = registry.promote(entry.version, by=_who(args), reason=args.reason)
    print(f"{promoted.version} is now in production (was {before.version if before else 'the base model'})")
    return EXIT_OK


@guarded
def _rollback(args: argparse.Namespace) -> int:
    registry = open_registry()
    before = registry.production()
    now = registry.rollback(by=_who(args), reason=args.reason)
    print(f"rolled back {before.version if before else '?'}: now serving {now.version if now else 'the base model'}")
    return EXIT_OK


@guarded
def _adapters(args: argparse.Namespace) -> int:
    registry = open_registry()
    versions = registry.versions()
    if args.json:
        production = registry.production()
        print(
            json.dumps(
                {
                    "production": production.version if production else None,
                    "versions": [version_figures(v) | {"path": str(v.path)} for v in versions],
                    "history": registry.history(),
                },
                indent=2,
                default=str,
            )
        )
        return EXIT_OK
    if not versions:
        print("no adapters registered yet; the base model serves")
        return EXIT_OK
    print(
        f"  {'version':<8} {'status':<10} {'created':<25} {'trigger':<8} {'dataset':<12} {'knowledge':<12} "
        f"{'train':>6} {'trained':<7} {'best val':>9} {'gate val':>9} {'right':>8} {'EN':>8} {'PT':>8} "
        f"{'declined':>8} {'wrong':>8}  gate"
    )
    for entry in versions:
        row = version_figures(entry)
        by_lang = row["gate_accuracy_by_lang"] or {}
        print(
            f"{'*' if entry.status == PRODUCTION else ' '} {entry.version:<8} {entry.status:<10} "
            f"{entry.created_at:<25} {row['trigger'] or '-':<8} {(row['dataset_hash'] or '-')[:12]:<12} "
            f"{(row['knowledge_hash'] or '-')[:12]:<12} {row['train_examples'] or '-':>6} {row['training'] or '-':<7} "
            f"{_num(row['best_val_loss'])} {_num(row['gate_val_loss'])} {_pct(row['gate_accuracy'])} "
            f"{_pct(by_lang.get('en'))} {_pct(by_lang.get('pt'))} {_pct(row['gate_declined_rate'])} "
            f"{_pct(row['gate_wrong_rate'])}  {row['gate'] or '-'}"
        )
    return EXIT_OK


@guarded
def _pipeline(args: argparse.Namespace) -> int:
    def show(event: dict) -> None:
        print(json.dumps(event, default=str), flush=True)

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    result = run_pipeline(
        trigger=args.trigger,
        requested_by=_who(args),
        on_progress=show if args.events else _PipelineDisplay(),
        skip_if_unchanged=args.skip_if_unchanged,
        train_args=train_args,
        full=args.full,
    )
    if result.outcome == "busy":
        report(result.message)
        return EXIT_USAGE
    if args.events:
        show({"event": "result", **result.to_dict()})
    else:
        print(result.message)
    return EXIT_FAILED if result.outcome == "failed" else EXIT_OK


class _PipelineDisplay:
    """The pipeline's events for people, on stderr: a line per stage, the training steps as progress
    (a bar on a terminal). The gate and grounding children show their own only when run alone."""

    def __init__(self):
        self.started = time.monotonic()
        self.training: Progress | None = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self._end_training()
            details = " ".join(f"{key} {value}" for key, value in event.items() if key not in ("event", "stage"))
            print(
                f"[{clock(time.monotonic() - self.started)}] {event['stage']}{': ' + details if details else ''}",
                file=sys.stderr,
                flush=True,
            )
        elif kind == "start":
            self.training = Progress("training", event["total"], unit="step", initial=event["step"])
        elif kind == "step" and self.training is not None:
            self.training.update(event["step"], loss=event["loss"], val=event.get("val_loss"))
        elif kind == "eval" and self.training is not None:
            self.training.note(f"step {event['step']}: val loss {event['val_loss']:.4f}")
        elif kind in ("done", "error"):
            self._end_training()

    def _end_training(self) -> None:
        if self.training is not None:
            self.training.close()
            self.training = None


def _num(value) -> str:
    return f"{value:>9.4f}" if isinstance(value, (int, float)) else f"{'-':>9}"


def _pct(value) -> str:
    return f"{value:>8.1%}" if isinstance(value, (int, float)) else f"{'-':>8}"


# --- status: the newest training runs ------------------------------------------------------------


def run_summaries(limit: int = 10) -> list[dict]:
    """Newest runs first: status.json plus whether the process is alive and the run resumable."""
    home = InferenceSettings.load().farense_home
    rows = []
    for run in all_runs(home)[:limit]:
        status = run.status()
        rows.append(
            status
            | {
                "run_id": run.id,
                "run_dir": str(run.dir),
                "alive": status.get("state") == "running" and pid_alive(status.get("pid")),
                "resumable": is_resumable(run),
                "checkpoints": sorted(p.name for p in run.checkpoints.glob("step-*")),
                "best_adapter": str(run.best) if run.best.is_dir() else None,
                "final_adapter": str(run.final) if run.final.is_dir() else None,
            }
        )
    return rows


@guarded
def _status(args: argparse.Namespace) -> int:
    rows = run_summaries(args.limit)
    if args.json:
        print(json.dumps({"runs": rows}, indent=2, default=str))
        return 0
    if not rows:
        print("no training runs yet")
    for row in rows:
        state = row.get("state", "?") + ("" if row["alive"] or row.get("state") != "running" else " (process gone)")
        losses = " ".join(
            f"{k.split('_')[0]} {row[k]:.4f}"
            for k in ("initial_val_loss", "best_val_loss", "final_val_loss")
            if row.get(k) is not None
        )
        print(f"{row['run_id']}  {state:<24} step {row.get('step', '?')}/{row.get('total', '?')}  {losses}")
        if row.get("reason"):
            print(f"    {row['reason']}")
    return 0


# --- argv -> exit code, for training/cli.py ------------------------------------------------------


def _parser(name: str, help_text: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m training {name}", description=help_text)


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="e.g. v0003 (or just 3)")


def promote(argv: list[str]) -> int:
    parser = _parser("promote", "put a registered adapter version into production (files are verified first)")
    _add_version(parser)
    _add_who(parser, "promotion")
    args = parse(parser, argv)
    return args if isinstance(args, int) else _promote(args)


def rollback(argv: list[str]) -> int:
    parser = _parser("rollback", "go back to the previous production adapter (or the base model)")
    _add_who(parser, "rollback")
    args = parse(parser, argv)
    return args if isinstance(args, int) else _rollback(args)


def adapters(argv: list[str]) -> int:
    parser = _parser("adapters", "list registered adapter versions; * marks production")
    parser.add_argument("--json", action="store_true")
    args = parse(parser, argv)
    return args if isinstance(args, int) else _adapters(args)


def pipeline(argv: list[str]) -> int:
    parser = _parser("pipeline", "build the dataset, train, gate, and promote or reject, once")
    parser.add_argument("--events", action="store_true", help="print progress as JSON lines on stdout")
    parser.add_argument("--trigger", default="manual", help="recorded with the result (default: manual)")
    parser.add_argument("--by", help="who asked (default: your user name)")
    parser.add_argument(
        "--skip-if-unchanged", action="store_true", help="do nothing when production was trained on the same data"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="train from scratch on the whole dataset, not from the production adapter (RETRAIN_MODE=full)",
    )
    parser.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="after --: extra `training run` flags, e.g. -- --iters 50"
    )
    args = parse(parser, argv)
    return args if isinstance(args, int) else _pipeline(args)


def status(argv: list[str]) -> int:
    parser = _parser("status", "show the latest training runs")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--limit", type=int, default=10, help="how many runs, newest first")
    args = parse(parser, argv)
    return args if isinstance(args, int) else _status(args)
