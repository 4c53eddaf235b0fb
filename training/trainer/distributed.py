"""Data-parallel LoRA training on MLX's own distributed backend (`mx.distributed`), one process per rank.

`mlx.launch` starts `python -m training run` on every rank (a ring over TCP or Thunderbolt, MPI, or
NCCL on CUDA); `launcher.py` does that for `--local-ranks N` / `--hostfile FILE`.

Global batch semantics. The ranks cut the same length-sorted global micro-batches as a single
process with the same plan; rank r takes rows r, r+N, r+2N… of each (similar lengths on every rank)
and divides its loss sum by the *global* micro-batch's target count. The ranks' gradients then add
up to the single-process gradient of that micro-batch, and one all_sum per optimizer step (all
trainable arrays concatenated) gives every rank the single-process update. Validation batches are
dealt round-robin and their token-weighted sums all_sum'd. So N ranks compute what one process
computes with the same global batch, up to float summation order.

Rank 0 (the lead) owns FARENSE_HOME: the training lock, the run folder, checkpoints, adapters,
metrics, status and --events. It decides which run, settings and dataset; the dataset files are
shipped to the other ranks, which need only the project and the base model. On resume rank 0 loads
the checkpoint and broadcasts weights, optimizer state and `Progress` (the data position). Values
that steer control flow (validation loss, stop requests) are reduced, so every rank branches alike.

The world size is not in the fingerprint: results do not depend on it, so a run may be resumed on
another number of ranks (same numbers up to float rounding; bit for bit with the same number).

Stopping: mlx.launch copies its stdin to every rank. A line `stop REASON` finishes the step and
checkpoints (like SIGTERM), `kill` ends the rank at once; rank 0 takes the end of its stdin (the
launcher is gone) as a stop. SIGHUP (an ssh session gone) stops like SIGTERM.

A plain run is `OneRank`: rank 0 of 1, whose collectives are identities, so the loop and the launch
flow have one code path for one rank or N and never touch mx.distributed on one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from ..errors import EXIT_USAGE, exit_code
from .batching import Batch, TokenizedExample, _round_up, collate
from .checkpoint import CheckpointError, Progress, differences
from .checkpoint import restore as restore_checkpoint
from .loop import validation_loss, validation_sums

log = logging.getLogger(__name__)

# Set in the processes that mlx.launch (ring, nccl, jaccl) or mpirun starts.
LAUNCHER_VARS = ("MLX_RANK", "MLX_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


class Abandoned(RuntimeError):
    """Another rank failed; rank 0 reports it, this rank just ends (exit 0: mlx.launch would otherwise
    kill rank 0 before it has said why)."""


class RankFailed(RuntimeError):
    """Rank 0's view of another rank's error; `exit_code` is the one that rank would have used."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def under_launcher() -> bool:
    return any(name in os.environ for name in LAUNCHER_VARS)


def world() -> Distributed | OneRank:
    """The group when this process is one of several ranks, else rank 0 of 1. A plain
    `python -m training run` never touches mx.distributed; under a launcher, failing to join the group
    is an error (not a silent single-process run that would write the same run folder as rank 0)."""
    if not under_launcher():
        return OneRank()
    backend = _backend()
    if backend == "ring" and not Path(os.environ["MLX_HOSTFILE"]).read_text().strip():
        return OneRank()  # `mlx.launch -n 1`: one host, no ring
    group = mx.distributed.init(strict=backend != "any", backend=backend)
    return Distributed(group) if group.size() > 1 else OneRank()


def _backend() -> str:
    """The backend the launcher set up, from the environment it gave this process."""
    env = os.environ
    if "MLX_JACCL_COORDINATOR" in env:
        return "jaccl"
    if "NCCL_HOST_IP" in env:
        return "nccl"
    if "MLX_HOSTFILE" in env:
        return "ring"
    if "OMPI_COMM_WORLD_SIZE" in env or "PMI_SIZE" in env:
        return "mpi"
    return "any"


@dataclass(frozen=True)
class Shard:
    batch: Batch | None  # this rank's rows of a global micro-batch (None: fewer rows than ranks)
    total: int  # assistant targets in the whole global micro-batch
    tokens: int  # real input positions in the whole global micro-batch
    cells: int  # padded positions over all ranks' rows


class _World:
    """What the training flow asks of its ranks; `OneRank` and `Distributed` answer it."""

    rank: int
    size: int

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def shard(self, examples: list[TokenizedExample], groups: list[list[int]], pad_id: int) -> list[Shard]:
        """This rank's rows of every global micro-batch, with the whole micro-batch's counts."""
        shards = []
        for group in groups:
            parts = [group[r :: self.size] for r in range(self.size)]
            mine = parts[self.rank]
            shards.append(
                Shard(
                    collate([examples[i] for i in mine], pad_id) if mine else None,
                    total=sum(int(examples[i].mask[1:].sum()) for i in group),
                    tokens=sum(len(examples[i]) - 1 for i in group),
                    cells=sum(len(p) * _round_up(max(len(examples[i]) for i in p) - 1) for p in parts if p),
                )
            )
        return shards

    def check_same_inputs(self, fingerprints: list[dict]) -> None:
        """Every rank must train on rank 0's inputs (settings, data, base model and its dtype)."""
        for rank, fingerprint in enumerate(fingerprints[1:], 1):
            changed = differences(fingerprints[0], fingerprint)
            if changed:
                message = (
                    f"rank {rank} has other inputs than rank 0 ({'; '.join(changed)}); every host "
                    "needs the same base model (MODEL_PATH) and dtype"
                )
                if self.lead:
                    raise RankFailed(message, EXIT_USAGE)
                raise Abandoned(message)


class OneRank(_World):
    """A plain `python -m training run`: rank 0 of 1. Every collective is the identity, so the one
    training flow runs unchanged, bit for bit what a single process computed before there were ranks."""

    rank, size = 0, 1

    def world_fields(self) -> dict:
        return {}

    def control(self, stop):
        return nullcontext()  # stop requests come as signals only

    def settle(self, error: BaseException | None, value=None) -> list:
        if error is not None:
            raise error
        return [value]

    def share(self, make):
        return make()

    def sum_tree(self, tree):
        return tree

    def step_end(self, loss_sum: float, stop) -> float:
        return loss_sum

    def stopping(self, stop) -> str | None:
        return stop.signal

    def validation_loss(self, model, batches: list[Batch]) -> float:
        return validation_loss(model, batches)

    def restore(self, resume, model, optimizer) -> Progress | None:
        if resume is None:
            return None
        restore_checkpoint(resume, model, optimizer)
        return resume.progress


class Distributed(_World):
    """N ranks on an mx.distributed group (N > 1)."""

    def __init__(self, group):
        self.group, self.rank, self.size = group, group.rank(), group.size()
        self._agreed: str | None = None

    def world_fields(self) -> dict:
        """What config.json and status.json record of a data-parallel run."""
        return {"distributed": {"world_size": self.size, "backend": _backend()}}

    # --- collectives: every rank calls them in the same order, and evaluates each at once (a lazy
    # graph could skip one on some rank: zeros_like(x) does not wait for x) ------------------------

    def _sum(self, array):
        total = mx.distributed.all_sum(array, group=self.group, stream=mx.cpu)
        mx.eval(total)
        return total

    def from_lead(self, array):
        """Rank 0's array on every rank (the others add zeros, which is exact)."""
        return self._sum(array if self.lead else mx.zeros_like(array))

    def share(self, make):
        """Rank 0's `make()` (JSON-able) on every rank; the others do not call it."""
        data = json.dumps(make()).encode() if self.lead else b""
        size = int(self.from_lead(mx.array([len(data)], mx.int32)).item())
        buffer = np.frombuffer(data, np.uint8) if self.lead else np.zeros(size, np.uint8)
        return json.loads(bytes(np.array(self.from_lead(mx.array(buffer)))))

    def exchange(self, value) -> list:
        """Every rank's JSON-able value, in rank order, on every rank."""
        data = np.frombuffer(json.dumps(value).encode(), np.uint8)
        width = int(mx.distributed.all_max(mx.array([data.size], mx.int32), group=self.group, stream=mx.cpu).item())
        row = np.zeros(width, np.uint8)
        row[: data.size] = data
        rows = np.array(mx.distributed.all_gather(mx.array(row)[None], group=self.group, stream=mx.cpu))
        return [json.loads(bytes(r).rstrip(b"\0")) for r in rows]

    def settle(self, error: BaseException | None, value=None) -> list:
        """Every rank reports how its part went. All well: every rank's value. Else every rank stops:
        rank 0 raises its own error or a RankFailed naming the first failed rank; others Abandoned."""
        mine = {"value": value} if error is None else {"error": str(error), "exit_code": exit_code(error)}
        everyone = self.exchange(mine)
        failed = [(rank, report) for rank, report in enumerate(everyone) if "error" in report]
        if not failed:
            return [report["value"] for report in everyone]
        if self.lead and error is not None:
            raise error
        rank, report = failed[0]
        if self.lead:
            raise RankFailed(f"rank {rank}: {report['error']}", report["exit_code"])
        raise Abandoned(f"rank {rank} failed: {report['error']}")

    def sum_tree(self, tree):
        """The ranks' sum of a tree of arrays, with one all_sum over all of them concatenated."""
        leaves = tree_flatten(tree)
        flat = mx.distributed.all_sum(
            mx.concatenate([v.reshape(-1).astype(mx.float32) for _, v in leaves]), group=self.group
        )
        summed, offset = {}, 0
        for name, value in leaves:
            summed[name] = flat[offset : offset + value.size].reshape(value.shape).astype(value.dtype)
            offset += value.size
        return tree_map_with_path(lambda path, _: summed[path], tree)

    # --- the loop's distributed pieces ---------------------------------------------------------

    def step_end(self, loss_sum: float, stop) -> float:
        """The global loss sum of the step; also agrees on the stop every rank acts on (`stopping`)."""
        local = stop.signal
        total, stopping = self._sum(mx.array([loss_sum, 1.0 if local else 0.0], mx.float64)).tolist()
        self._agreed = (local or "another rank's stop request") if stopping else None
        return total

    def stopping(self, stop) -> str | None:
        """The stop agreed at the end of the step: ranks act on it, never on a late one."""
        return self._agreed

    def validation_loss(self, model, batches: list[Batch]) -> float:
        """Token-weighted mean over all `batches`, each evaluated on one rank (round-robin)."""
        total, count = validation_sums(model, batches[self.rank :: self.size])
        sums = self._sum(mx.stack([total, count]))
        return self.from_lead(sums[0] / sums[1]).item()  # rank 0's number: decisions must agree

    def restore(self, resume, model, optimizer) -> Progress | None:
        """Rank 0 restores its checkpoint (`resume`); every rank gets its weights, optimizer state and
        Progress. None (on every rank) when rank 0 starts afresh."""
        error = None
        if self.lead and resume is not None:
            try:
                restore_checkpoint(resume, model, optimizer)
            except CheckpointError as problem:
                error = problem
        saved = self.settle(error, asdict(resume.progress) if self.lead and resume is not None else None)[0]
        if saved is None:
            return None
        model.load_weights(tree_flatten(tree_map(self.from_lead, model.trainable_parameters())), strict=False)
        optimizer.state = tree_map(self.from_lead, optimizer.state)
        mx.eval(model.parameters(), optimizer.state)
        return Progress(**saved)

    # --- stop requests -------------------------------------------------------------------------

    @contextmanager
    def control(self, stop):
        """Stop requests from the launcher (stdin lines, see the module doc) and SIGHUP."""

        def hangup(number, _frame):
            if stop.signal is None:
                stop.signal = "SIGHUP"
                log.warning("SIGHUP: finishing the current step, then saving a checkpoint")

        previous = signal.signal(signal.SIGHUP, hangup)
        threading.Thread(target=self._watch, args=(stop,), name="launcher-stdin", daemon=True).start()
        try:
            yield
        finally:
            signal.signal(signal.SIGHUP, previous)

    def _watch(self, stop) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(0, 4096)  # not sys.stdin: a daemon thread must hold no Python lock
            except OSError:
                return
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                word, _, reason = line.decode(errors="replace").strip().partition(" ")
                if word == "stop" and stop.signal is None:
                    stop.signal = reason or "stop request"
                    log.warning("%s: finishing the current step, then saving a checkpoint", stop.signal)
                elif word == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
        # mlx.launch's own processes hold our stdin open: its end means the launcher died
        if self.lead and "MLX_RANK" in os.environ and stop.signal is None:
            stop.signal = "launcher gone"
            log.warning("the launcher is gone (stdin closed): saving a checkpoint and stopping")
