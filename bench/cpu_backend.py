"""CPU backend choices side by side: reference BLAS vs OpenBLAS, float32 vs 4-bit weights.

Each configuration runs in its own process (the BLAS is chosen before mlx is imported), and the
configurations alternate over several rounds so machine noise hits them alike. Prints prompt and
decode tokens/s per configuration and ratios against the engine's default (OpenBLAS + float32).
Training tokens/s too: LoRA steps of the trainer (`training.trainer.loop.make_step`, the default LoRA
settings) on the same median-length batches of the seed dataset in every configuration; trained
tokens = assistant (target) tokens, one warm-up step left out.

    python bench/cpu_backend.py [--rounds 2] [--model PATH] [--train-steps 2] [--train-batch 4]
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
from pathlib import Path

CONFIGS = {  # name: (BLAS_PATH, CPU_DTYPE)
    "openblas+float32": ("", "float32"),
    "reference+float32": ("none", "float32"),
    "openblas+4bit": ("", "quantized"),
    "reference+4bit": ("none", "quantized"),
}

PROBE = r"""
import json, sys, time
import inference
from inference.loading import load_base
from inference.settings import InferenceSettings
import mlx.core as mx
from mlx_lm.generate import stream_generate
s = InferenceSettings.load()
model, tok, info = load_base(s.model_path, s.home.models, "cpu", s.cpu_dtype)
REQUEST = "Tell me the history of SC Farense, the football club of Faro, in detail. " * 6
prompt = tok.apply_chat_template([{"role": "user", "content": REQUEST}], add_generation_prompt=True)
for _ in stream_generate(model, tok, prompt, max_tokens=4): pass  # warm-up
last = None
for last in stream_generate(model, tok, prompt, max_tokens=64): pass
print(json.dumps({"blas": info.blas, "dtype": info.dtype, "prompt_tokens": last.prompt_tokens,
                  "prompt_tps": last.prompt_tps, "decode_tps": last.generation_tps}))
"""


TRAIN_PROBE = r"""
import json, sys, time
from pathlib import Path
import inference
from inference.loading import load_base
from inference.settings import InferenceSettings
from training.trainer.batching import batch_groups, collate, load_examples, pad_id
from training.trainer.lora import apply_lora
from training.trainer.distributed import OneRank
from training.trainer.loop import make_loss, make_optimizer, make_step
from training.settings import TrainingSettings
import mlx.core as mx
dataset, batch_size, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s, t = InferenceSettings.load(), TrainingSettings.load()
model, tok, info = load_base(s.model_path, s.home.models, "cpu", s.cpu_dtype)
mx.random.seed(0)
apply_lora(model, t.lora_layers, t.lora_rank, t.lora_scale, t.lora_dropout)
examples = load_examples(dataset / "train.jsonl", tok, s.system_prompt, t.max_seq_length)
groups = batch_groups(examples, batch_size)
middle = len(groups) // 2
batches = [collate([examples[i] for i in g], pad_id(tok)) for g in groups[middle: middle + steps + 1]]
model.train()
optimizer = make_optimizer(t)
forward, apply = make_step(model, optimizer, make_loss(model), accumulation=1, grad_clip=t.grad_clip,
                           compiled=False, dist=OneRank())
for i, b in enumerate(batches):  # the first is a warm-up
    if i == 1:
        tic = time.perf_counter()
    loss, count, grads = forward(b.inputs, b.positions, b.labels, b.weights, b.weights.sum(), None, b.shared)
    apply(grads)
    mx.eval(model.parameters(), optimizer.state, loss, count)
seconds = time.perf_counter() - tic
targets = sum(int(b.weights.sum().item()) for b in batches[1:])
print(json.dumps({"blas": info.blas, "dtype": info.dtype, "train_tps": targets / seconds, "targets": targets,
                  "width": batches[1].inputs.shape[1]}))
"""


def train(name: str, model: str, dataset: Path, batch: int, steps: int) -> dict:
    blas, dtype = CONFIGS[name]
    env = {**os.environ, "BLAS_PATH": blas, "CPU_DTYPE": dtype, "MODEL_PATH": model}
    env = {k: v for k, v in env.items() if not k.startswith("TRAIN_")}  # the trainer's defaults
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_PROBE, str(dataset), str(batch), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def seed_dataset(home: Path) -> Path:
    from data.builder import build_dataset
    from data.settings import DataSettings

    return Path(build_dataset(DataSettings.load(farense_home=home)).path)


def run(name: str, model: str) -> dict:
    blas, dtype = CONFIGS[name]
    env = {**os.environ, "BLAS_PATH": blas, "CPU_DTYPE": dtype, "MODEL_PATH": model}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="", help="MODEL_PATH (default: embedded SmolLM2-135M)")
    parser.add_argument("--train-steps", type=int, default=2, help="timed LoRA steps per run (0: no training)")
    parser.add_argument("--train-batch", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    trained: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    home = Path(tempfile.mkdtemp(prefix="farense-bench-cpu-"))
    try:
        dataset = seed_dataset(home) if args.train_steps else None
        for _ in range(args.rounds):
            for name in CONFIGS:
                results[name].append(run(name, args.model))
                if dataset is not None:
                    trained[name].append(train(name, args.model, dataset, args.train_batch, args.train_steps))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    base = {k: statistics.median(r[k] for r in results["openblas+float32"]) for k in ("prompt_tps", "decode_tps")}
    print(f"{'config':<20} {'BLAS':<10} {'prompt tok/s':>13} {'decode tok/s':>13} {'prompt ×':>9} {'decode ×':>9}")
    for name, rows in results.items():
        prompt = statistics.median(r["prompt_tps"] for r in rows)
        decode = statistics.median(r["decode_tps"] for r in rows)
        print(
            f"{name:<20} {rows[0]['blas']:<10} {prompt:>13.1f} {decode:>13.1f} "
            f"{prompt / base['prompt_tps']:>9.2f} {decode / base['decode_tps']:>9.2f}"
        )
    print(
        f"(median of {args.rounds} alternating rounds; "
        f"prompt {results['openblas+float32'][0]['prompt_tokens']} tokens, 64 decoded)"
    )
    if not args.train_steps:
        return
    train_base = statistics.median(r["train_tps"] for r in trained["openblas+float32"])
    print(f"\n{'config':<20} {'BLAS':<10} {'train tok/s':>12} {'train ×':>8}")
    for name, rows in trained.items():
        speed = statistics.median(r["train_tps"] for r in rows)
        print(f"{name:<20} {rows[0]['blas']:<10} {speed:>12.1f} {speed / train_base:>8.2f}")
    first = trained["openblas+float32"][0]
    print(
        f"(LoRA training: {args.train_steps} timed steps of batch {args.train_batch} after a warm-up, "
        f"{first['targets']} trained tokens, batch width {first['width']}; trained tokens = assistant tokens)"
    )


if __name__ == "__main__":
    main()
