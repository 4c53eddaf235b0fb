"""`python -m training export`: the production adapter fused into the embedded model computes what
base + adapter computes; its GGUF (mlx-lm's exporter) read back through `mx.load` and this
project's converter gives the same logits and tokenizer; the PEFT folder has PEFT's names, shapes
and scale. A base in llama.cpp's interleaved Q/K layout is refused for GGUF and PEFT."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from inference.adapters import read_adapter
from inference.modelstore import ensure_converted
from training.lifecycle.factory import install_factory_adapter
from training.lifecycle.registry import Registry

from .models import make_adapter

TEXTS = [
    "When was SC Farense founded?",
    "Quem foi o treinador do Farense em 1990? Estádio de São Luís: 7 000 lugares.",
    "<|im_start|>user\nWho was Hassan Nader?<|im_end|>\n",
]


def export(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", "export", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | env,
    )


def logits(model, tokenizer) -> list[np.ndarray]:
    import mlx.core as mx

    return [np.array(model(mx.array(tokenizer.encode(text))[None])[0].astype(mx.float32)) for text in TEXTS]


def max_diff(first, second) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(first, second, strict=True))


def test_export_fuses_the_production_adapter_into_a_folder_a_gguf_and_a_peft_adapter(
    default_model_dir, isolated_env, tmp_path
):
    import mlx.core as mx
    from mlx_lm.utils import load

    from inference.loading import load_base
    from inference.lora import apply_adapter

    registry = Registry(isolated_env, base_model=default_model_dir)
    production = install_factory_adapter(registry, default_model_dir)
    out = tmp_path / "farense-smollm2"
    result = export(str(out), "--gguf", "--peft", "--dtype", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{out}: {default_model_dir.name} with v0001 fused in, float32" in result.stdout

    base, tokenizer, info = load_base(str(default_model_dir), default_model_dir.parent, "cpu", "float32")
    base_q = np.array(base.layers[14].self_attn.q_proj.weight)
    apply_adapter(base, read_adapter(production.path), info.layout)
    base.eval()
    served = logits(base, tokenizer)
    fused, fused_tokenizer = load(str(out))
    fused_logits = logits(fused, fused_tokenizer)
    difference = max_diff(fused_logits, served)
    print(f"fused (float32) vs base + adapter: max |logit difference| {difference:.2e}")
    assert difference < 1e-3
    assert all((a.argmax(-1) == b.argmax(-1)).all() for a, b in zip(fused_logits, served, strict=True))

    # The GGUF, read back by mx.load in this project's converter (Q/K back in Hugging Face's order)
    back = ensure_converted(out / f"{out.name}.gguf", tmp_path / "from-gguf")
    assert json.loads((back / "config.json").read_text())["rope_traditional"] is False
    round_trip, round_trip_tokenizer = load(str(back))
    difference = max_diff(logits(round_trip, round_trip_tokenizer), fused_logits)
    print(f"GGUF round trip vs fused: max |logit difference| {difference:.2e}")
    assert difference < 1e-5
    assert all(round_trip_tokenizer.encode(text) == tokenizer.encode(text) for text in TEXTS)

    # PEFT: lora_A (r, in), lora_B (out, r) under base_model.model.<module>; W + (alpha / r)·B·A
    peft = out / "peft"
    config = json.loads((peft / "adapter_config.json").read_text())
    spec = read_adapter(production.path).spec
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config["r"] == spec.rank and config["lora_alpha"] == spec.scale * spec.rank
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert config["layers_to_transform"] == list(range(14, 30)) and config["use_rslora"] is False
    tensors = mx.load(str(peft / "adapter_model.safetensors"))
    ours = mx.load(str(production.path / "adapters.safetensors"))
    expected = {
        f"base_model.model.{name[: -len('.lora_a')]}.{'lora_A' if name.endswith('a') else 'lora_B'}.weight": value
        for name, value in ours.items()
    }
    assert tensors.keys() == expected.keys()
    assert all(tensors[name].shape == expected[name].shape[::-1] for name in tensors)
    module = "base_model.model.model.layers.14.self_attn.q_proj"
    a, b = np.array(tensors[f"{module}.lora_A.weight"]), np.array(tensors[f"{module}.lora_B.weight"])
    fused_q = np.array(mx.load(str(out / "model.safetensors"))["model.layers.14.self_attn.q_proj.weight"])
    peft_q = base_q + config["lora_alpha"] / config["r"] * b @ a
    assert np.abs(peft_q - fused_q).max() < 1e-5

    again = export(str(out))
    assert again.returncode == 2 and "exists: export into a new folder" in again.stderr


def test_export_refuses_what_it_would_write_wrong(tiny_model_dir, isolated_env, tmp_path):
    registry = Registry(isolated_env, base_model=tiny_model_dir)  # the tiny llama: interleaved Q/K
    registry.promote(registry.add_candidate(make_adapter(tiny_model_dir, tmp_path / "a")).version, by="t", reason="t")
    env = {"MODEL_PATH": str(tiny_model_dir)}
    for flag, message in (
        ("--gguf", "interleaved Q/K layout (GGUF order, rope_traditional): a GGUF written from it would be wrong"),
        ("--peft", "PEFT adapters are for Hugging Face's Q/K layout"),
    ):
        result = export(str(tmp_path / "out"), flag, **env)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "farense-home"]  # nothing half-written
    unknown = export(str(tmp_path / "out"), "--version", "7", **env)
    assert unknown.returncode == 2 and "no adapter version v0007" in unknown.stderr
    assert export(str(tmp_path / "out"), **env).returncode == 0  # the fused folder alone is right in any layout
