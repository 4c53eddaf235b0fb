"""Data-parallel LoRA training: one process vs two local ranks (mlx.launch, ring on 127.0.0.1).

Both train the same run (same dataset, same global batch, so the same numbers) from a scratch
FARENSE_HOME; the configurations alternate over rounds so machine noise hits them alike. Prints the
training throughput (tokens of the global batch per second of step time, first two steps left out
as warm-up), the wall time of the whole command (start-up, mlx.launch, the baseline evaluation
included) and the ratios against one process.

    python bench/distributed.py [--rounds 2] [--iters 10] [--batch-size 8] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.home import Home, default_root

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {  # name: (extra `python -m training run` flags, extra environment)
    "1 process": ([], {}),
    "2 processes": (["--local-ranks", "2"], {}),
    # what the launcher's default of cores ÷ ranks BLAS threads per rank avoids
    "2, all-core BLAS": (["--local-ranks", "2"], {"OPENBLAS_NUM_THREADS": str(os.cpu_count() or 1)}),
}


def train(name: str, env: dict, args) -> dict:
    flags, extra_env = CONFIGS[name]
    command = [
        sys.executable,
        "-m",
        "training",
        "run",
        "--events",
        "--iters",
        str(args.iters),
        "--batch-size",
        str(args.batch_size),
        "--eval-every",
        "100000",
        "--val-batches",
        "1",
        "--warmup-steps",
        "0",
        *flags,
    ]
    tic = time.perf_counter()
    out = subprocess.run(command, env=env | extra_env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - tic
    if out.returncode != 0:
        sys.exit(f"{name}: exit {out.returncode}\n{out.stderr[-2000:]}")
    start = next(json.loads(line) for line in out.stdout.splitlines() if '"start"' in line)
    lines = (Path(start["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if m["kind"] == "train"][2:]
    return {
        "tokens_per_s": sum(m["tokens"] for m in steps) / sum(m["step_s"] for m in steps),
        "wall_s": wall,
        "loss": steps[-1]["loss"],
        "plan": start["plan"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="", help="MODEL_PATH (default: the embedded SmolLM2-135M)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="farense-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "PIPELINE_", "OPENBLAS_"))}
    env |= {"FARENSE_HOME": str(home), "MODEL_PATH": args.model}
    env.setdefault("MODELS_DIR", str(Home(default_root()).models))  # reuse the converted model
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    try:
        subprocess.run([sys.executable, "-m", "data", "build"], env=env, cwd=REPO, check=True, capture_output=True)
        for _ in range(args.rounds):
            for name in CONFIGS:
                results[name].append(train(name, env, args))
                print(f"  {name}: {results[name][-1]['tokens_per_s']:.1f} tok/s", file=sys.stderr)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    base = statistics.median(r["tokens_per_s"] for r in results["1 process"])
    base_wall = statistics.median(r["wall_s"] for r in results["1 process"])
    print(f"{'config':<17} {'train tok/s':>12} {'wall s':>8} {'tok/s ×':>8} {'wall ×':>7} {'final loss':>11}")
    for name, rows in results.items():
        speed = statistics.median(r["tokens_per_s"] for r in rows)
        wall = statistics.median(r["wall_s"] for r in rows)
        print(
            f"{name:<17} {speed:>12.1f} {wall:>8.1f} {speed / base:>8.2f} {wall / base_wall:>7.2f} "
            f"{rows[-1]['loss']:>11.4f}"
        )
    plan = results["1 process"][0]["plan"]
    print(
        f"(median of {args.rounds} alternating rounds; {args.iters} steps of batch {plan['batch_size']} × "
        f"{plan['grad_accumulation']}, max_seq_length {plan['max_seq_length']}; {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
