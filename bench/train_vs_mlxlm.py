"""LoRA training throughput: our trainer (`training/`) vs mlx-lm's (`mlx_lm.tuner.trainer.train`).

Same model (the embedded SmolLM2-135M through `inference.loading.load_base`: float32 on CPU, BLAS
preloaded by `import inference`), same data (the seed dataset `data.build_dataset` writes into a
scratch FARENSE_HOME, rendered with the serving system prompt for both), same batch size, LoRA
rank/scale/layers/keys, max sequence length and steps. mlx-lm gets what `mlx_lm.lora --train
--mask-prompt` does (freeze, `linear_to_lora_layers`, its own `train()` with its compiled step and
`iterate_batches`), only with the model handed over in-process and AdamW (lr 2e-4, weight decay
0.01) like ours. Neither checkpoints; ours validates one batch before and after the timed steps,
mlx-lm gets no validation set. Each run is a fresh child process, A B A B…, so memory is measured
cleanly and machine noise hits both alike.

Trained tokens = the assistant (target) tokens of the batch's examples, padding excluded: the
tokens the loss is taken on. mlx-lm's own count adds one per row (its mask also takes the padding
token after each sequence), so both are counted here from the batches, the same way.
Padding fraction = 1 − real input positions / (rows × input width) of the batches actually run.

    python bench/train_vs_mlxlm.py [--rounds 2] [--steps 8] [--batch-size 8] [--lora-rank 8]
                                   [--lora-layers 16] [--max-seq-length 256] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.home import Home, default_root

REPO = Path(__file__).resolve().parents[1]
ARMS = ("ours", "mlx-lm")
TOKENS_DEFINITION = (
    "trained tokens = assistant (target) tokens of each batch's examples, padding excluded; "
    "tok/s = their sum / the sum of step times (forward, backward, optimizer; "
    "validation and saving left out; mlx-lm's compile traces included, as they are "
    "part of its steps); tok/CPU-s = the same over the process CPU time of those steps "
    "(all threads), steadier than wall time on a shared machine"
)


def child(arm: str, args, out: Path) -> None:
    import inference  # noqa: F401  (preloads OpenBLAS before mlx is imported, for both arms)

    result = train_ours(args) if arm == "ours" else train_mlx_lm(args)
    import mlx.core as mx

    result |= {
        "peak_mx_gb": mx.get_peak_memory() / 1024**3,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }
    out.write_text(json.dumps(result))


def train_ours(args) -> dict:
    from inference.settings import InferenceSettings
    from training.settings import TrainingSettings
    from training.trainer.launch import launch
    from training.trainer.reporting import Reporter

    settings = TrainingSettings.load(
        dataset=args.dataset,
        iters=args.steps,
        batch_size=args.batch_size,
        lora_rank=args.lora_rank,
        lora_layers=args.lora_layers,
        max_seq_length=args.max_seq_length,
        eval_every=10**6,
        val_batches=1,
        checkpoint_every=10**6,
        memory_budget_gb=64,
        grad_checkpoint="off",
    )  # the wanted batch, unsplit

    class Clock(Reporter):  # CPU time at each event: a step's is the time since the event before it
        def emit(self, event, **fields):
            self.marks.append((event, time.process_time()))

    clock = Clock(False)
    clock.bar, clock.marks = False, []
    run, outcome = launch(settings, InferenceSettings.load(), resume=False, run_id=None, reporter=clock)
    steps = [m for m in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines()) if m["kind"] == "train"]
    plan = run.config()["plan"]
    assert plan["batch_size"] == args.batch_size and plan["grad_accumulation"] == 1, plan
    cpu = [now - before for (_, before), (event, now) in zip(clock.marks, clock.marks[1:]) if event == "step"]
    return {
        "step_s": [m["step_s"] for m in steps],
        "cpu_s": cpu,
        "targets": [m["targets"] for m in steps],
        "real": sum(m["tokens"] for m in steps),
        "cells": sum(round(m["tokens"] / (1 - m["padding"])) for m in steps),
        "loss": steps[-1]["loss"],
    }


def train_mlx_lm(args) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from inference.loading import load_base
    from inference.settings import InferenceSettings
    from training.trainer.batching import served_messages

    serving = InferenceSettings.load()
    model, tokenizer, _ = load_base(serving.model_path, serving.home.models, serving.device, serving.cpu_dtype)

    def split(name: str):  # the same token sequences our trainer builds: serving system prompt included
        lines = (Path(args.dataset) / f"{name}.jsonl").read_text().splitlines()
        records = [
            {"messages": served_messages(tokenizer, json.loads(line)["messages"], serving.system_prompt)}
            for line in lines
            if line.strip()
        ]
        return CacheDataset(ChatDataset(records, tokenizer, mask_prompt=True))

    train_set = split("train")
    batches = []  # (width of the padded array, [(offset, length)] per row) of every training batch
    step_s, cpu_s, losses, handed = [], [], [], []

    def recording(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        for batch, lengths in trainer.iterate_batches(dataset, batch_size, max_seq_length, loop, seed, comm_group):
            if loop:
                batches.append((batch.shape[1], np.array(lengths).tolist()))
                handed.append(time.process_time())
            yield batch, lengths

    class Times(TrainingCallback):
        def on_train_loss_report(self, info):  # steps_per_report=1: one report per step
            step_s.append(1.0 / info["iterations_per_second"])
            cpu_s.append(time.process_time() - handed[-1])
            losses.append(info["train_loss"])

    # what mlx_lm.lora.train_model does, with the same LoRA keys as ours
    np.random.seed(0)
    mx.random.seed(0)
    model.freeze()
    keys = sorted(name for name, module in model.layers[-1].named_modules() if isinstance(module, nn.Linear))
    linear_to_lora_layers(
        model, args.lora_layers, {"rank": args.lora_rank, "scale": 20.0, "dropout": 0.0, "keys": keys}
    )
    optimizer = optim.AdamW(learning_rate=2e-4, weight_decay=0.01)
    with tempfile.TemporaryDirectory(prefix="mlxlm-adapter-") as folder:
        targs = trainer.TrainingArgs(
            batch_size=args.batch_size,
            iters=args.steps,
            val_batches=1,
            steps_per_report=1,
            steps_per_eval=10**6,
            steps_per_save=10**6,
            max_seq_length=args.max_seq_length,
            adapter_file=str(Path(folder) / "adapters.safetensors"),
        )
        mx.reset_peak_memory()
        trainer.train(
            model, optimizer, train_set, None, args=targs, iterate_batches=recording, training_callback=Times()
        )  # no validation set: no evaluation inside the step timings
    targets, real, cells = [], 0, 0
    for width, rows in batches:
        lengths = [min(length, width) for _, length in rows]
        targets.append(sum(length - offset for (offset, _), length in zip(rows, lengths)))
        real += sum(length - 1 for length in lengths)
        cells += len(rows) * (width - 1)
    sorted_by = sorted(range(len(train_set)), key=train_set.itemlen)
    return {
        "step_s": step_s,
        "cpu_s": cpu_s,
        "targets": targets,
        "real": real,
        "cells": cells,
        "loss": losses[-1],
        "itemlen_distinct": sorted({train_set.itemlen(i) for i in range(len(train_set))}),
        "sort_is_identity": sorted_by == list(range(len(train_set))),
    }


def build_dataset(home: Path) -> Path:
    os.environ["FARENSE_HOME"] = str(home)
    from data.builder import build_dataset as build
    from data.settings import DataSettings

    return Path(build(DataSettings.load()).path)


def run_child(arm: str, env: dict, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable,
            __file__,
            "--child",
            arm,
            "--result",
            out.name,
            "--dataset",
            str(args.dataset),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--lora-rank",
            str(args.lora_rank),
            "--lora-layers",
            str(args.lora_layers),
            "--max-seq-length",
            str(args.max_seq_length),
        ]
        tic = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{arm}: exit {done.returncode}\n{done.stderr[-3000:]}")
        result = json.loads(Path(out.name).read_text())
    result["wall_s"] = time.perf_counter() - tic
    return result


def summarise(rows: list[dict]) -> dict:
    """Median over rounds of: aggregate tok/s (wall and CPU), median per-step tok/s, memory, padding."""
    return {
        "tps": statistics.median(sum(r["targets"]) / sum(r["step_s"]) for r in rows),
        "tps_cpu": statistics.median(sum(r["targets"]) / sum(r["cpu_s"]) for r in rows),
        "tps_steady": statistics.median(
            statistics.median(t / s for t, s in zip(r["targets"], r["step_s"])) for r in rows
        ),
        "peak_mx_gb": statistics.median(r["peak_mx_gb"] for r in rows),
        "peak_rss_gb": statistics.median(r["peak_rss_gb"] for r in rows),
        "padding": statistics.median(1 - r["real"] / r["cells"] for r in rows),
        "wall_s": statistics.median(r["wall_s"] for r in rows),
        "loss": rows[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-layers", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--model", default="", help="MODEL_PATH (default: the embedded SmolLM2-135M)")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args, args.result)

    home = Path(tempfile.mkdtemp(prefix="farense-bench-train-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "PIPELINE_"))}
    env |= {"FARENSE_HOME": str(home), "MODEL_PATH": args.model}
    env.setdefault("MODELS_DIR", str(Home(default_root()).models))  # reuse a converted model
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    try:
        args.dataset = build_dataset(home)
        for round_ in range(args.rounds):
            for arm in ARMS:
                results[arm].append(run_child(arm, env, args))
                r = results[arm][-1]
                print(
                    f"  round {round_ + 1} {arm}: {sum(r['targets']) / sum(r['step_s']):.1f} trained tok/s, "
                    f"step s {' '.join(f'{s:.2f}' for s in r['step_s'])}",
                    file=sys.stderr,
                )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report(results, args)


def report(results: dict[str, list[dict]], args) -> None:
    ours, theirs = summarise(results["ours"]), summarise(results["mlx-lm"])
    print(f"{'':<24} {'ours':>10} {'mlx-lm':>10} {'ours/mlx-lm':>12}")
    for label, key, fmt in (
        ("trained tok/s", "tps", ".1f"),
        ("median step tok/s", "tps_steady", ".1f"),
        ("trained tok/CPU-s", "tps_cpu", ".1f"),
        ("peak MLX memory GB", "peak_mx_gb", ".3f"),
        ("peak RSS GB", "peak_rss_gb", ".3f"),
        ("padding fraction", "padding", ".3f"),
        ("child wall s", "wall_s", ".1f"),
    ):
        a, b = ours[key], theirs[key]
        print(f"{label:<24} {a:>10{fmt}} {b:>10{fmt}} {a / b if b else float('nan'):>11.2f}×")
    print(
        f"last train loss (other batches, other LR schedules; a sanity check): ours {ours['loss']:.3f}, "
        f"mlx-lm {theirs['loss']:.3f}"
    )
    mlx = results["mlx-lm"][0]
    print(
        f"mlx-lm length sort: CacheDataset.itemlen gives {mlx['itemlen_distinct']} for every example "
        f"(len of the raw record dict), so the 'sorted' order is the identity: {mlx['sort_is_identity']}"
    )
    print(
        f"(median of {args.rounds} alternating rounds, each arm a fresh process; {args.steps} steps of batch "
        f"{args.batch_size}, LoRA rank {args.lora_rank} on the last {args.lora_layers} layers, max_seq_length "
        f"{args.max_seq_length}; {os.cpu_count()} CPUs shared with other jobs)"
    )
    print(TOKENS_DEFINITION)


if __name__ == "__main__":
    main()
