"""Training memory: the auto-tuner's plan (training/memory.py) against the peak a run really reaches.

Each budget is one `training.trainer.launch.launch` run in a fresh child process, on the embedded SmolLM2-135M
and the seed dataset (`data.build_dataset` in a scratch FARENSE_HOME), cut to the longest training
examples: every batch is then about as wide as the one the tuner planned for (it plans for the
longest example), so the measured peak is the worst case the plan must cover. Prints, per budget,
the plan (micro-batch × accumulation, checkpointing, estimate) and the measured peaks: MLX's
allocator (`mx.get_peak_memory` over the training steps) and the process's peak RSS (model loading
included).

    python bench/memory_training.py [--steps 4] [--budgets auto,1.3] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common.home import Home, default_root

REPO = Path(__file__).resolve().parents[1]


def child(budget: str, steps: int, dataset: Path, out: Path) -> None:
    import inference  # noqa: F401  (OpenBLAS before mlx)
    from inference.settings import InferenceSettings
    from training.settings import TrainingSettings
    from training.trainer.launch import launch
    from training.trainer.reporting import Reporter

    settings = TrainingSettings.load(
        dataset=dataset,
        iters=steps,
        eval_every=10**6,
        val_batches=1,
        checkpoint_every=10**6,
        memory_budget_gb=None if budget == "auto" else budget,
    )
    run, _ = launch(settings, InferenceSettings.load(), resume=False, run_id=None, reporter=Reporter(False))
    steps_ = [m for m in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines()) if m["kind"] == "train"]
    out.write_text(
        json.dumps(
            {
                "plan": run.config()["plan"],
                "peak_mx_gb": max(m["peak_memory_gb"] for m in steps_),
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                "padding": sum(m["padding"] for m in steps_) / len(steps_),
            }
        )
    )


def longest_dataset(home: Path, rows: int) -> Path:
    """The seed dataset with only its `rows` longest training examples (by characters)."""
    os.environ["FARENSE_HOME"] = str(home)
    from data.builder import build_dataset
    from data.settings import DataSettings

    full = Path(build_dataset(DataSettings.load()).path)
    lines = [line for line in (full / "train.jsonl").read_text().splitlines() if line.strip()]
    folder = home / "longest"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(sorted(lines, key=len)[-rows:]) + "\n")
    shutil.copy(full / "valid.jsonl", folder / "valid.jsonl")
    manifest = json.loads((full / "manifest.json").read_text()) | {"note": f"the {rows} longest train examples"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--budgets",
        default="auto,1.3",
        help="comma-separated TRAIN_MEMORY_BUDGET_GB values; auto = available RAM minus a margin",
    )
    parser.add_argument("--model", default="", help="MODEL_PATH (default: the embedded SmolLM2-135M)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.dataset, args.result)

    home = Path(tempfile.mkdtemp(prefix="farense-bench-memory-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "PIPELINE_"))}
    env |= {"FARENSE_HOME": str(home), "MODEL_PATH": args.model}
    env.setdefault("MODELS_DIR", str(Home(default_root()).models))  # reuse a converted model
    rows = []
    try:
        dataset = longest_dataset(home, 8 * args.steps)
        for budget in args.budgets.split(","):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        budget.strip(),
                        "--steps",
                        str(args.steps),
                        "--dataset",
                        str(dataset),
                        "--result",
                        out.name,
                    ],
                    env=env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    sys.exit(f"budget {budget}: exit {done.returncode}\n{done.stderr[-3000:]}")
                rows.append((budget.strip(), json.loads(Path(out.name).read_text())))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(
        f"{'budget':<7} {'budget GB':>9} {'micro×acc':>9} {'ckpt':>5} {'seq':>5} {'plan GB':>8} "
        f"{'MLX peak GB':>12} {'RSS peak GB':>12} {'MLX/plan':>9} {'RSS/plan':>9}"
    )
    for name, r in rows:
        p = r["plan"]
        print(
            f"{name:<7} {p['budget_gb']:>9.2f} {p['batch_size']:>5}×{p['grad_accumulation']:<3} "
            f"{'on' if p['grad_checkpoint'] else 'off':>5} {p['max_seq_length']:>5} {p['estimated_gb']:>8.3f} "
            f"{r['peak_mx_gb']:>12.3f} {r['peak_rss_gb']:>12.3f} {r['peak_mx_gb'] / p['estimated_gb']:>9.2f} "
            f"{r['peak_rss_gb'] / p['estimated_gb']:>9.2f}"
        )
        print(f"        plan: {p['reason']}")
    print(
        f"({args.steps} steps of the wanted batch 8 on the {8 * args.steps} longest seed examples, padding "
        f"{rows[0][1]['padding']:.1%}; MLX peak over the training steps, RSS peak of the whole child process)"
    )


if __name__ == "__main__":
    main()
