"""`python -m training run`: one training run from settings to adapters: dataset → model + LoRA →
memory plan → run folder → loop, the same flow on one rank or N (distributed.py).

Rank 0 does what touches FARENSE_HOME and picks run, settings and dataset for all; every rank loads
the model, and a failure on any rank stops them all (on one rank: it is raised). `--local-ranks N |
--hostfile FILE` (or TRAIN_DISTRIBUTED) runs the same command on N ranks through mlx.launch
(launcher.py) and exits with rank 0's code; the other ranks stay quiet and exit 0 when another
rank's failure stops them. Exit codes: training/errors.py.

Also the recipe for a run's frozen validation batches, so the adapter gate scores a candidate and the
production adapter on exactly the batches the run validated on.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from common.files import sha256_file
from inference.layout import LAYOUT_KEY
from inference.loading import ModelLoadError, load_base
from inference.settings import InferenceSettings

from ..errors import INPUT_ERRORS, UsageError, exit_code, one_line, parse, report
from ..runs import FAILED, RUNNING, Run, RunBusy, find_run, is_resumable, new_run, training_lock
from ..settings import FINGERPRINTED, TrainingSettings, add_setting_flags, setting_flags
from . import checkpoint, distributed, memory
from .batching import DatasetError, frozen_valid_batches, load_examples, pad_id, truncate
from .distributed import Abandoned, Distributed, OneRank, RankFailed
from .launcher import HostUnreachable, relaunch
from .loop import Outcome, StopFlag, train
from .lora import ADAPTER_FILE, CONFIG_FILE, apply_lora, start_from, use_grad_checkpoint
from .reporting import BarAwareHandler, Reporter

log = logging.getLogger(__name__)

# What the other ranks take from rank 0's serving settings (the base model path comes separately).
SHARED_SERVING = {"system_prompt", "device", "cpu_dtype"}
START_FOLDER = "start"  # where the other ranks keep the warm start's adapter rank 0 ships them


class NothingToResume(UsageError, ValueError):
    """--resume named no run, or a run that is finished or still running."""


@dataclass(frozen=True)
class Dataset:
    path: Path
    train: Path
    valid: Path
    manifest: dict
    content_hash: str  # the manifest's, plus our own hash of the split files (catches hand edits)


def open_dataset(path: Path) -> Dataset:
    path = Path(path).expanduser()
    train, valid = path / "train.jsonl", path / "valid.jsonl"
    for split in (train, valid):
        if not split.is_file():
            raise DatasetError(
                f"TRAIN_DATASET: {split} not found (a dataset folder needs train.jsonl and "
                "valid.jsonl; build one with `python -m data build`)"
            )
    digest = hashlib.sha256()
    for split in (train, valid):
        digest.update(split.read_bytes())
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        log.warning("%s has no manifest.json; identifying the dataset by its files' hash", path)
        manifest = {"content_hash": None, "synthesized": True}
    except ValueError as error:
        raise DatasetError(f"{path / 'manifest.json'}: not valid JSON ({error})") from None
    content_hash = f"{manifest.get('content_hash')}+files:{digest.hexdigest()[:16]}"
    return Dataset(path, train, valid, manifest, content_hash)


def latest_dataset() -> Path:
    """TRAIN_DATASET unset: the newest dataset `python -m data build` wrote."""
    from data.builder import latest_dataset
    from data.settings import DataSettings

    try:
        folder = latest_dataset(DataSettings.load())
    except ValueError as error:  # data's SettingsError: DATASETS_DIR and friends
        raise DatasetError(str(error)) from None
    if folder is None:
        raise DatasetError("no dataset yet: build one with `python -m data build` or set TRAIN_DATASET")
    return folder


def run_valid_batches(run_dir: Path, tokenizer) -> list:
    """The frozen validation batches of a run (for the gate: candidate and production alike)."""
    recipe = Run(Path(run_dir)).config()["valid_batches"]
    return frozen_valid_batches(
        tokenizer,
        Path(recipe["valid_path"]),
        recipe["system_prompt"],
        recipe["batch_size"],
        recipe["max_seq_length"],
        recipe["max_batches"],
    )


def launch(
    settings: TrainingSettings,
    serving: InferenceSettings,
    *,
    resume: bool,
    run_id: str | None,
    reporter: Reporter,
    dist: OneRank | Distributed | None = None,
) -> tuple[Run | None, Outcome]:
    """Start a new run or resume one; returns when it finished, stopped early or was cancelled.

    `dist`: this process's rank (default: rank 0 of 1). Rank 0 takes the lock and picks run, settings
    and dataset; every rank loads the model; any rank's failure stops all of them (rank 0 reports it).
    Ranks other than 0 return no Run: they write nothing.
    """
    dist = dist or OneRank()
    stop = StopFlag()
    reporter.stop = stop
    with ExitStack() as stack:
        stack.enter_context(_stop_on_signals(stop))
        stack.enter_context(dist.control(stop))
        run = recorded = dataset = choice = error = None
        model_path = serving.model_path
        if dist.lead:
            try:
                stack.enter_context(training_lock(serving.farense_home))
                run, recorded, settings, model_path = _choose_run(
                    serving.farense_home, settings, serving, resume, run_id
                )
                dataset = open_dataset(settings.dataset or latest_dataset())
                choice = {
                    "settings": settings.model_dump(mode="json"),
                    "model_path": model_path,
                    "serving": serving.model_dump(mode="json", include=SHARED_SERVING),
                }
            except Exception as problem:
                error = problem
        choice = dist.settle(error, choice)[0]
        files = dist.share(lambda: _shipped_files(dataset, settings))
        if not dist.lead:  # rank 0's settings, base model name, dataset files and warm start
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="farense-rank-")))
            for name, data in files.items():
                (folder / name).parent.mkdir(exist_ok=True)
                (folder / name).write_bytes(base64.b64decode(data))
            dataset = open_dataset(folder)
            settings = TrainingSettings.load(**choice["settings"])
            if settings.init_adapter is not None:
                settings = settings.model_copy(update={"init_adapter": folder / START_FOLDER})
            serving = serving.model_copy(update=choice["serving"])
            model_path = choice["model_path"]
        parts = error = None
        try:
            parts = _load(settings, serving, model_path, dataset, run, recorded, resume=run is not None, plan=dist.lead)
        except Exception as problem:
            error = problem
        reports = dist.settle(
            error, parts and {"fingerprint": parts.fingerprint, "plan": parts.plan.as_dict() if parts.plan else None}
        )
        dist.check_same_inputs([report["fingerprint"] for report in reports])
        plan = memory.MemoryPlan(**reports[0]["plan"])  # rank 0's plan
        return _train(parts, plan, settings, serving, model_path, dataset, run, reporter, stop, dist)


@dataclass
class _Parts:
    model: object
    tokenizer: object
    info: object  # inference.loading's model info
    adapter_config: dict
    fingerprint: dict
    loaded: checkpoint.Loaded | None
    examples: list
    plan: memory.MemoryPlan | None


def _choose_run(
    home: Path, settings: TrainingSettings, serving: InferenceSettings, resume: bool, run_id: str | None
) -> tuple[Run | None, dict | None, TrainingSettings, str]:
    """The run to resume (with its recorded settings and model), or none for a new run."""
    run = recorded = None
    model_path = serving.model_path
    if resume:
        run = find_run(home, run_id)
        if run is None:
            raise NothingToResume(
                f"no run {run_id!r} under {home / 'runs'}"
                if run_id
                else f"no unfinished run with a checkpoint under {home / 'runs'}"
            )
        if not is_resumable(run):
            raise NothingToResume(
                f"run {run.id} is {run.status().get('state')} (pid "
                f"{run.status().get('pid')}); only interrupted runs can be resumed"
            )
        recorded = run.config()
        settings = _with_recorded(settings, recorded)
        if "model_path" not in serving.model_fields_set:
            model_path = recorded["model_path"]
    return run, recorded, settings, model_path


def _load(
    settings: TrainingSettings,
    serving: InferenceSettings,
    model_path: str,
    dataset: Dataset,
    run: Run | None,
    recorded: dict | None,
    *,
    resume: bool,
    plan: bool = True,
) -> _Parts:
    """Base model + LoRA, fingerprint, the checkpoint to resume from, train examples, memory plan."""
    budget = settings.memory_budget_gb or memory.default_budget_gb()
    model, tokenizer, info = load_base(model_path, serving.home.models, serving.device, serving.cpu_dtype)
    mx.random.seed(settings.seed)
    adapter_config = apply_lora(
        model, settings.lora_layers, settings.lora_rank, settings.lora_scale, settings.lora_dropout
    )
    adapter_config |= {"base_model": info.model_id, LAYOUT_KEY: info.layout.qk_layout}
    start_weights = None
    if settings.init_adapter is not None:
        start_from(model, settings.init_adapter, adapter_config)
        start_weights = sha256_file(settings.init_adapter / ADAPTER_FILE)
    fingerprint = checkpoint.fingerprint(
        settings.training_values(),
        dataset.content_hash,
        info.model_id,
        info.dtype,
        serving.system_prompt,
        start_weights,
    )
    loaded = checkpoint.load_latest(run.checkpoints, fingerprint) if resume else None
    examples = load_examples(dataset.train, tokenizer, serving.system_prompt, settings.max_seq_length)
    chosen = _plan_memory(settings, model, max(len(e) for e in examples), budget, recorded) if plan else None
    return _Parts(model, tokenizer, info, adapter_config, fingerprint, loaded, examples, chosen)


def _train(
    parts: _Parts,
    plan: memory.MemoryPlan,
    settings: TrainingSettings,
    serving: InferenceSettings,
    model_path: str,
    dataset: Dataset,
    run: Run | None,
    reporter: Reporter,
    stop: StopFlag,
    dist: OneRank | Distributed,
) -> tuple[Run | None, Outcome]:
    lead = dist.lead
    model, tokenizer, info, loaded = parts.model, parts.tokenizer, parts.info, parts.loaded
    examples = truncate(parts.examples, plan.max_seq_length)
    valid = frozen_valid_batches(
        tokenizer, dataset.valid, serving.system_prompt, plan.batch_size, plan.max_seq_length, settings.val_batches
    )
    if plan.grad_checkpoint:
        use_grad_checkpoint(model)
    memory.apply_limits(plan, info.device)
    world = dist.world_fields()

    if lead:
        if run is None:
            run = new_run(serving.farense_home)
            run.write_json("manifest.json", dataset.manifest)
            run.write_json(
                "config.json",
                {
                    "run_id": run.id,
                    "created_at": _now(),
                    "training": settings.training_values(),
                    "settings": settings.model_dump(mode="json"),
                    "plan": plan.as_dict(),
                    "model_path": model_path,
                    "base_model": {**info.__dict__, "layout": info.layout.qk_layout},
                    "fingerprint": parts.fingerprint,
                    "adapter_config": parts.adapter_config,
                    "dataset": {
                        "path": str(dataset.path),
                        "content_hash": dataset.content_hash,
                        "train_examples": len(examples),
                    },
                    "valid_batches": {
                        "valid_path": str(dataset.valid),
                        "system_prompt": serving.system_prompt,
                        "batch_size": plan.batch_size,
                        "max_seq_length": plan.max_seq_length,
                        "max_batches": settings.val_batches,
                    },
                    **world,
                },
            )
        resumed_from = loaded.progress.step if loaded else 0
        run.set_status(
            RUNNING,
            pid=os.getpid(),
            started_at=run.status().get("started_at") or _now(),
            resumed_at=_now() if loaded else None,
            step=resumed_from,
            total=settings.iters,
            **world,
        )
        reporter.emit(
            "start",
            run_id=run.id,
            run_dir=str(run.dir),
            step=resumed_from,
            total=settings.iters,
            resumed=loaded is not None,
            plan=plan.as_dict(),
            device=info.device,
            base_model=info.model_id,
            train_examples=len(examples),
            valid_batches=len(valid),
            **world,
        )
    try:
        outcome = train(
            model,
            examples,
            valid,
            settings=settings,
            plan=plan,
            pad_id=pad_id(tokenizer),
            run=run,
            reporter=reporter,
            fingerprint=parts.fingerprint,
            adapter_config=parts.adapter_config,
            resume=loaded,
            stop=stop,
            compiled=info.device == "gpu",
            dist=dist,
        )
    except BaseException as error:
        if lead:
            run.set_status(FAILED, reason=f"{type(error).__name__}: {error}", pid=os.getpid())
        raise
    if not lead:
        return None, outcome
    results = {
        "step": outcome.step,
        "best_val_loss": outcome.best_val_loss,
        "best_step": outcome.best_step,
        "final_val_loss": outcome.final_val_loss,
        "initial_val_loss": outcome.initial_val_loss,
    }
    run.set_status(outcome.state, reason=outcome.reason, **results)
    reporter.emit(
        "done",
        run_id=run.id,
        status=outcome.state,
        reason=outcome.reason,
        total=settings.iters,
        **results,
        best_adapter=str(run.best) if run.best.is_dir() else None,
        final_adapter=str(run.final) if run.final.is_dir() else None,
    )
    return run, outcome


def _plan_memory(
    settings: TrainingSettings, model, longest: int, budget: float, recorded: dict | None
) -> memory.MemoryPlan:
    """A new run asks the tuner; a resumed one keeps its micro-batches (the data order depends on them)
    whatever RAM is free now."""
    shape = memory.model_shape(model, settings.lora_layers)
    if recorded is None:
        plan = memory.plan(
            shape,
            batch_size=settings.batch_size,
            grad_accumulation=settings.grad_accumulation,
            max_seq_length=settings.max_seq_length,
            longest=longest,
            grad_checkpoint=settings.grad_checkpoint,
            budget_gb=budget,
        )
    else:
        plan = memory.MemoryPlan(**recorded["plan"])
        need = memory.estimate_bytes(shape, plan.batch_size, plan.max_seq_length, plan.grad_checkpoint)
        if need > budget * memory.GB:
            log.warning(
                "the resumed run's plan needs ~%.2f GB, the budget is now %.2f GB; keeping it", need / memory.GB, budget
            )
    log.info(
        "memory plan: batch %d × %d accumulation, max_seq_length %d, gradient checkpointing %s "
        "(%s; model weights %.2f GB, %d LoRA parameters)",
        plan.batch_size,
        plan.grad_accumulation,
        plan.max_seq_length,
        "on" if plan.grad_checkpoint else "off",
        plan.reason,
        shape.weight_bytes / memory.GB,
        shape.lora_params,
    )
    return plan


def _with_recorded(settings: TrainingSettings, recorded: dict) -> TrainingSettings:
    """Resume with the run's own settings; anything set explicitly now (env, .env, flag) is kept,
    so a changed value reaches the fingerprint check and is refused there."""
    explicit = settings.model_fields_set
    update = {k: v for k, v in recorded["training"].items() if k in FINGERPRINTED and k not in explicit}
    if "dataset" not in explicit:
        update["dataset"] = Path(recorded["dataset"]["path"])
    start = recorded["settings"].get("init_adapter")
    if "init_adapter" not in explicit and start:
        update["init_adapter"] = Path(start)
    return settings.model_copy(update=update)


def _shipped_files(dataset: Dataset, settings: TrainingSettings) -> dict[str, str]:
    """What the other ranks need from rank 0's disk: the dataset's files and a warm start's adapter."""
    files = {p.name: p for p in (dataset.train, dataset.valid, dataset.path / "manifest.json") if p.is_file()}
    if settings.init_adapter is not None:
        files |= {f"{START_FOLDER}/{name}": settings.init_adapter / name for name in (ADAPTER_FILE, CONFIG_FILE)}
    return {name: base64.b64encode(path.read_bytes()).decode() for name, path in files.items()}


@contextmanager
def _stop_on_signals(stop: StopFlag):
    """SIGTERM/SIGINT: finish the step, checkpoint, exit cleanly. A second one kills at once."""

    def handler(number, _frame):
        stop.signal = signal.Signals(number).name
        signal.signal(number, signal.SIG_DFL)
        log.warning("%s: finishing the current step, then saving a checkpoint (again to abort now)", stop.signal)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- python -m training run ----------------------------------------------------------------------

# Expected errors: one line, no traceback. Bad input exits 2 (errors.py); these others exit 1.
FAILURES = (RunBusy, ModelLoadError, RankFailed, HostUnreachable)  # RankFailed: the failed rank's own code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training run", description="train a LoRA adapter (new run, or --resume an interrupted one)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="RUN_ID",
        help="continue RUN_ID, or without an id the newest interrupted run",
    )
    parser.add_argument(
        "--events", action="store_true", help="print one JSON progress event per line on stdout (for a parent process)"
    )
    add_setting_flags(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--local-ranks",
        metavar="N",
        help="data-parallel on N local processes through mlx.launch "
        "(ring backend on 127.0.0.1); same as --distributed N",
    )
    where.add_argument(
        "--hostfile",
        metavar="FILE",
        help="data-parallel on the hosts of an mlx.launch JSON hostfile; same as --distributed FILE",
    )
    args = parse(parser, argv)
    return args if isinstance(args, int) else _run(args)


def _run(args: argparse.Namespace) -> int:
    reporter = Reporter(args.events)
    BarAwareHandler.install(reporter)
    flags = setting_flags(args)
    flags["distributed"] = args.local_ranks or args.hostfile or flags["distributed"]
    try:
        settings = TrainingSettings.load(**flags)
        serving = InferenceSettings.load()
        dist = distributed.world()
        if dist.size == 1 and settings.distributed and not distributed.under_launcher():
            return relaunch(settings.distributed, _rank_argv(args, flags), events=args.events)
        if not dist.lead:
            reporter = _quiet_rank(dist.rank)
        run, outcome = launch(
            settings, serving, resume=args.resume is not None, run_id=args.resume or None, reporter=reporter, dist=dist
        )
    except Abandoned as error:  # rank 0 reports the failure and sets the exit code
        log.warning("%s", error)
        return 0
    except (*INPUT_ERRORS, *FAILURES) as error:
        return _fail(error, reporter)
    except Exception as error:  # a bug: keep the traceback in the log, still tell the parent
        log.exception("training failed")
        return _fail(RuntimeError(f"{type(error).__name__}: {error}"), reporter)
    if run is None:  # a rank other than 0: rank 0 has the run and says how it ended
        return 0
    reporter.clear()
    print(
        f"run {run.id}: {outcome.state} at step {outcome.step} ({outcome.reason}); adapters in {run.dir / 'adapters'}",
        file=sys.stderr,
    )
    return 0


def _fail(error: BaseException, reporter: Reporter) -> int:
    """One line on stderr (and an "error" event); the exit code says whose fault it was."""
    code = exit_code(error)
    message = one_line(error)
    reporter.clear()
    reporter.emit("error", message=message, exit_code=code)
    report(message)
    return code


def _rank_argv(args: argparse.Namespace, flags: dict) -> list[str]:
    """The command line of every rank: this one, minus the distribution, plus --events for the launcher."""
    argv = ["-v", "run"] if logging.getLogger().isEnabledFor(logging.DEBUG) else ["run"]
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
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s", "%H:%M:%S")
        )
    logging.getLogger().setLevel(logging.WARNING)
    reporter = Reporter(False)
    reporter.bar = False
    BarAwareHandler.reporter = reporter
    return reporter
