"""CPU backend choices side by side: reference BLAS vs OpenBLAS, float32 vs 4-bit weights.

Each configuration runs in its own process (the BLAS is chosen before mlx is imported), and the
configurations alternate over several rounds so machine noise hits them alike. Prints prompt and
decode tokens/s per configuration and ratios against the engine's default (OpenBLAS + float32).

    python bench/cpu_backend.py [--rounds 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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
model, tok, info = load_base(s.model_path, s.models_root, "cpu", s.cpu_dtype)
prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me the history of SC Farense, the football club of Faro, in detail. " * 6}], add_generation_prompt=True)
for _ in stream_generate(model, tok, prompt, max_tokens=4): pass  # warm-up
last = None
for last in stream_generate(model, tok, prompt, max_tokens=64): pass
print(json.dumps({"blas": info.blas, "dtype": info.dtype, "prompt_tokens": last.prompt_tokens,
                  "prompt_tps": last.prompt_tps, "decode_tps": last.generation_tps}))
"""


def run(name: str, model: str) -> dict:
    blas, dtype = CONFIGS[name]
    env = {**os.environ, "BLAS_PATH": blas, "CPU_DTYPE": dtype, "MODEL_PATH": model}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="", help="MODEL_PATH (default: embedded SmolLM2-135M)")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name in CONFIGS:
            results[name].append(run(name, args.model))
    base = {k: statistics.median(r[k] for r in results["openblas+float32"]) for k in ("prompt_tps", "decode_tps")}
    print(f"{'config':<20} {'BLAS':<10} {'prompt tok/s':>13} {'decode tok/s':>13} {'prompt ×':>9} {'decode ×':>9}")
    for name, rows in results.items():
        prompt = statistics.median(r["prompt_tps"] for r in rows)
        decode = statistics.median(r["decode_tps"] for r in rows)
        print(f"{name:<20} {rows[0]['blas']:<10} {prompt:>13.1f} {decode:>13.1f} "
              f"{prompt / base['prompt_tps']:>9.2f} {decode / base['decode_tps']:>9.2f}")
    print(f"(median of {args.rounds} alternating rounds; prompt {results['openblas+float32'][0]['prompt_tokens']} tokens, 64 decoded)")


if __name__ == "__main__":
    main()
