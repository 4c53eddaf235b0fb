"""Adapter lifecycle commands: promote, rollback, adapters, gate, pipeline.

`COMMANDS[name](argv) -> exit code` for `training/cli.py` to dispatch to; until it does, run them as
`python -m training.lifecycle_cli COMMAND ...` (the pipeline starts its gate child that way).
Exit codes: 0 done (a rejected candidate too: the report says so), 1 failure (training or the gate
crashed), 2 expected errors (unknown version, corrupt adapter, bad settings, pipeline busy), each
as one line on stderr without a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Callable

from inference.adapters import AdapterError
from inference.modelstore import ModelNotFound
from inference.settings import InferenceSettings, SettingsError

from .gate import GateError, describe, gate_version
from .lifecycle_settings import LifecycleSettings
from .pipeline import run_pipeline
from .registry import PRODUCTION, REJECTED, AdapterVersion, Registry, RegistryError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXPECTED = (AdapterError, RegistryError, GateError, SettingsError, ModelNotFound)


def _registry() -> Registry:
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


# --- commands: each takes parsed args and returns an exit code ---------------------------------

def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected errors become one stderr line and exit 2; anything else exit 1, still one line."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except EXPECTED as error:
            print(f"training: error: {_one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as error:
            logging.getLogger("training").debug("command failed", exc_info=True)
            print(f"training: error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
            return EXIT_FAILED

    return run


def _one_line(error: BaseException) -> str:
    return str(error).replace(":\n", ": ").replace("\n", "; ")


@_guarded
def _promote(args: argparse.Namespace) -> int:
    registry = _registry()
    before = registry.production()
    entry = registry.get(args.version)
    if entry.status == REJECTED:
        print(f"note: {entry.version} was rejected by the gate; promoting it anyway", file=sys.stderr)
    promoted = registry.promote(entry.version, by=_who(args), reason=args.reason)
    print(f"{promoted.version} is now in production (was {before.version if before else 'the base model'})")
    return EXIT_OK


@_guarded
def _rollback(args: argparse.Namespace) -> int:
    registry = _registry()
    before = registry.production()
    now = registry.rollback(by=_who(args), reason=args.reason)
    print(f"rolled back {before.version if before else '?'}: now serving "
          f"{now.version if now else 'the base model'}")
    return EXIT_OK


@_guarded
def _adapters(args: argparse.Namespace) -> int:
    registry = _registry()
    versions = registry.versions()
    if args.json:
        production = registry.production()
        print(json.dumps({"production": production.version if production else None,
                          "versions": [_row(v) for v in versions], "history": registry.history()},
                         indent=2, default=str))
        return EXIT_OK
    if not versions:
        print("no adapters registered yet; the base model serves")
        return EXIT_OK
    print(f"  {'version':<8} {'status':<10} {'created':<25} {'dataset':<12} {'train':>6} {'best val':>9} "
          f"{'gate val':>9} {'gate acc':>8}  gate")
    for entry in versions:
        row = _row(entry)
        print(f"{'*' if entry.status == PRODUCTION else ' '} {entry.version:<8} {entry.status:<10} "
              f"{entry.created_at:<25} {(row['dataset_hash'] or '-')[:12]:<12} {row['train_examples'] or '-':>6} "
              f"{_num(row['best_val_loss'])} {_num(row['gate_val_loss'])} {_pct(row['gate_accuracy'])}  "
              f"{row['gate'] or '-'}")
    return EXIT_OK


@_guarded
def _gate(args: argparse.Namespace) -> int:
    report = gate_version(_registry(), args.version)
    print(json.dumps(report, indent=2, default=str) if args.json else describe(report))
    return EXIT_OK


@_guarded
def _pipeline(args: argparse.Namespace) -> int:
    def show(event: dict) -> None:
        print(json.dumps(event, default=str), flush=True)

    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    result = run_pipeline(trigger=args.trigger, requested_by=_who(args), on_progress=show if args.events else None,
                          skip_if_unchanged=args.skip_if_unchanged, train_args=train_args)
    if result.outcome == "busy":
        print(f"training: error: {result.message}", file=sys.stderr)
        return EXIT_USAGE
    if args.events:
        show({"event": "result", **result.to_dict()})
    else:
        print(result.message)
    return EXIT_FAILED if result.outcome == "failed" else EXIT_OK


def _row(entry: AdapterVersion) -> dict:
    gate = entry.gate or {}
    candidate = gate.get("candidate") or {}
    return {"version": entry.version, "status": entry.status, "created_at": entry.created_at,
            "run_id": entry.run_id, "dataset_hash": entry.dataset.get("content_hash"),
            "train_examples": (entry.dataset.get("counts") or {}).get("train"),
            "best_val_loss": entry.metrics.get("best_val_loss"),
            "gate": ("accepted" if gate.get("accepted") else "rejected") if gate else None,
            "gate_val_loss": candidate.get("val_loss"), "gate_accuracy": candidate.get("accuracy"),
            "path": str(entry.path)}


def _num(value) -> str:
    return f"{value:>9.4f}" if isinstance(value, (int, float)) else f"{'-':>9}"


def _pct(value) -> str:
    return f"{value:>8.1%}" if isinstance(value, (int, float)) else f"{'-':>8}"


# --- wiring ------------------------------------------------------------------------------------

def _configure_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="e.g. v0003 (or just 3)")


def _configure_promote(parser: argparse.ArgumentParser) -> None:
    _configure_version(parser)
    _add_who(parser, "promotion")


def _configure_gate(parser: argparse.ArgumentParser) -> None:
    _configure_version(parser)
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")


def _configure_pipeline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", action="store_true", help="print progress as JSON lines on stdout")
    parser.add_argument("--trigger", default="manual", help="recorded with the result (default: manual)")
    parser.add_argument("--by", help="who asked (default: your user name)")
    parser.add_argument("--skip-if-unchanged", action="store_true",
                        help="do nothing when production was trained on the same data")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after --: extra `training run` flags, e.g. -- --iters 50")


# name -> (help, configure(parser), handler(args) -> exit code); training/cli.py's register() fits these.
SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "promote": ("put a registered adapter version into production (files are verified first)",
                _configure_promote, _promote),
    "rollback": ("go back to the previous production adapter (or the base model)",
                 lambda parser: _add_who(parser, "rollback"), _rollback),
    "adapters": ("list registered adapter versions; * marks production",
                 lambda parser: parser.add_argument("--json", action="store_true"), _adapters),
    "gate": ("compare a version with production on validation loss and eval questions",
             _configure_gate, _gate),
    "pipeline": ("build the dataset, train, gate, and promote or reject, once", _configure_pipeline, _pipeline),
}


def _command(name: str) -> Callable[[list[str]], int]:
    help_text, configure, handler = SUBCOMMANDS[name]

    def run(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=f"python -m training {name}", description=help_text)
        configure(parser)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit:  # --help, or a usage error argparse already explained
            return exit.code if isinstance(exit.code, int) else EXIT_USAGE
        return handler(args)

    return run


COMMANDS: dict[str, Callable[[list[str]], int]] = {name: _command(name) for name in SUBCOMMANDS}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m training.lifecycle_cli {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
