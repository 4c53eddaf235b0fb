"""`python -m training <command>`: a registry of subcommands, so promote/rollback/adapters can plug in.

Another module adds a command with `register("promote", "help", configure, handler)` and is imported
by `training/__main__.py`. Handlers return the exit code: 0 ok (also a run cancelled by
SIGINT/SIGTERM after saving its checkpoint: status.json and the "done" event say "cancelled"),
1 training failure, 2 bad settings / dataset / memory budget / changed fingerprint / nothing
(or only corrupt checkpoints) to resume.
Expected errors print one line on stderr, no traceback.

`run --local-ranks N | --hostfile FILE` (or TRAIN_DISTRIBUTED) runs the same command on N ranks
through mlx.launch (launcher.py) and exits with rank 0's code. A process that mlx.launch started is
a rank (distributed.py): rank 0 reports as above, the others stay quiet and exit 0 when another
rank's failure stops them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable

from inference.loading import ModelLoadError
from inference.modelstore import ModelNotFound
from inference.settings import InferenceSettings, SettingsError

from . import distributed
from .batching import DatasetError
from .checkpoint import CheckpointError, FingerprintMismatch
from .distributed import Abandoned, RankFailed
from .job import NothingToResume, launch
from .launcher import relaunch
from .memory import MemoryBudgetError
from .runs import BarAwareHandler, Reporter, RunBusy, all_runs, is_resumable, pid_alive
from .settings import TrainingSettings

log = logging.getLogger("training")

EXIT_FAILED, EXIT_USAGE = 1, 2
# A run whose checkpoints are all corrupt cannot be resumed: like NothingToResume it is exit 2,
# which tells the pipeline to start a fresh run instead.
USAGE_ERRORS = (SettingsError, DatasetError, FingerprintMismatch, MemoryBudgetError, ModelNotFound,
                NothingToResume, CheckpointError)
FAILURES = (RunBusy, ModelLoadError, RankFailed)  # RankFailed carries the failed rank's own code


@dataclass(frozen=True)
class Command:
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure: Callable, handler: Callable) -> None:
    COMMANDS[name] = Command(help, configure, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description="LoRA training of the Farense bot")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(handler=command.handler)
    args = parser.parse_args(argv)
    handler = BarAwareHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler], force=True)
    return args.handler(args)


def fail(error: BaseException, reporter: Reporter | None = None) -> int:
    """One line on stderr (and an "error" event); the exit code says whose fault it was."""
    code = exit_code(error)
    message = str(error).replace(":\n", ": ").replace("\n", "; ")
    if reporter is not None:
        reporter.clear()
        reporter.emit("error", message=message, exit_code=code)
    print(f"training: error: {message}", file=sys.stderr)
    return code


def exit_code(error: BaseException) -> int:
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    return EXIT_USAGE if isinstance(error, USAGE_ERRORS) else EXIT_FAILED


# --- run ---------------------------------------------------------------------------------------

def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_ID",
                        help="continue RUN_ID, or without an id the newest interrupted run")
    parser.add_argument("--events", action="store_true",
                        help="print one JSON progress event per line on stdout (for a parent process)")
    for name, field in TrainingSettings.model_fields.items():  # every TRAIN_X is also --x
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"setting_{name}", metavar="VALUE",
                            help=f"{field.description or ''} (TRAIN_{name.upper()}, default {field.default})")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local-ranks", metavar="N", help="data-parallel on N local processes through mlx.launch "
                       "(ring backend on 127.0.0.1); same as --distributed N")
    where.add_argument("--hostfile", metavar="FILE", help="data-parallel on the hosts of an mlx.launch JSON "
                       "hostfile; same as --distributed FILE")


def _run(args: argparse.Namespace) -> int:
    reporter = Reporter(args.events)
    BarAwareHandler.reporter = reporter
    flags = {k.removeprefix("setting_"): v for k, v in vars(args).items() if k.startswith("setting_")}
    flags["distributed"] = args.local_ranks or args.hostfile or flags["distributed"]
    try:
        settings = TrainingSettings.load(**flags)
        serving = InferenceSettings.load()
        dist = distributed.world()
        if dist is None and settings.distributed and not distributed.under_launcher():
            return relaunch(settings.distributed, _rank_argv(args, flags), events=args.events)
        if dist is not None and not dist.lead:
            reporter = _quiet_rank(dist.rank)
        run, outcome = launch(settings, serving, resume=args.resume is not None, run_id=args.resume or None,
                              reporter=reporter, dist=dist)
    except Abandoned as error:  # rank 0 reports the failure and sets the exit code
        log.warning("%s", error)
        return 0
    except (*USAGE_ERRORS, *FAILURES) as error:
        return fail(error, reporter)
    except Exception as error:  # a bug: keep the traceback in the log, still tell the parent
        log.exception("training failed")
        return fail(RuntimeError(f"{type(error).__name__}: {error}"), reporter)
    if run is None:  # a rank other than 0: rank 0 has the run and says how it ended
        return 0
    reporter.clear()
    print(f"run {run.id}: {outcome.state} at step {outcome.step} ({outcome.reason}); adapters in "
          f"{run.dir / 'adapters'}", file=sys.stderr)
    return 0


def _rank_argv(args: argparse.Namespace, flags: dict) -> list[str]:
    """The command line of every rank: this one, minus the distribution, plus --events for the launcher."""
    argv = ["-v", "run"] if args.verbose else ["run"]
    if args.resume is not None:
        argv += ["--resume", *([args.resume] if args.resume else [])]
    for name, value in flags.items():
        if value is not None and name != "distributed":
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, "--events"]


def _quiet_rank(rank: int) -> Reporter:
    """Ranks other than 0: no events, warnings only, tagged with the rank; stdout (the launcher's
    channel for rank 0's events) goes to stderr."""
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
                                               "%H:%M:%S"))
    logging.getLogger().setLevel(logging.WARNING)
    reporter = Reporter(False)
    reporter.bar = False
    BarAwareHandler.reporter = reporter
    return reporter


# --- status ------------------------------------------------------------------------------------

def _configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("--limit", type=int, default=10, help="how many runs, newest first")


def run_summaries(limit: int = 10) -> list[dict]:
    """Newest runs first: status.json plus whether the process is alive and the run resumable."""
    home = InferenceSettings.load().farense_home
    rows = []
    for run in all_runs(home)[:limit]:
        status = run.status()
        rows.append(status | {"run_id": run.id, "run_dir": str(run.dir),
                              "alive": status.get("state") == "running" and pid_alive(status.get("pid")),
                              "resumable": is_resumable(run),
                              "checkpoints": sorted(p.name for p in run.checkpoints.glob("step-*")),
                              "best_adapter": str(run.best) if run.best.is_dir() else None,
                              "final_adapter": str(run.final) if run.final.is_dir() else None})
    return rows


def _status(args: argparse.Namespace) -> int:
    try:
        rows = run_summaries(args.limit)
    except SettingsError as error:
        return fail(error)
    if args.json:
        print(json.dumps({"runs": rows}, indent=2, default=str))
        return 0
    if not rows:
        print("no training runs yet")
    for row in rows:
        state = row.get("state", "?") + ("" if row["alive"] or row.get("state") != "running" else " (process gone)")
        losses = " ".join(f"{k.split('_')[0]} {row[k]:.4f}" for k in ("initial_val_loss", "best_val_loss",
                                                                       "final_val_loss") if row.get(k) is not None)
        print(f"{row['run_id']}  {state:<24} step {row.get('step', '?')}/{row.get('total', '?')}  {losses}")
        if row.get("reason"):
            print(f"    {row['reason']}")
    return 0


register("run", "train a LoRA adapter (new run, or --resume an interrupted one)", _configure_run, _run)
register("status", "show the latest training runs", _configure_status, _status)
