"""Test models: a tiny randomly initialised llama with the real SmolLM2 tokenizer, adapters for it,
and a registry of gated versions of those.

Built in about a second, it runs real forward/backward passes and generation, so training, serving
and the bot are exercised end to end without the cost of the 135M default model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def make_tiny_model(
    out: Path,
    tokenizer_source: Path,
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    source_config = json.loads((tokenizer_source / "config.json").read_text())
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": source_config["vocab_size"],
        "rope_theta": 10000.0,
        "rope_traditional": True,
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
        "bos_token_id": source_config.get("bos_token_id"),
        "eos_token_id": source_config["eos_token_id"],
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(
        str(out / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"}
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_source / name, out / name)
    return out


def make_adapter(
    model_dir: Path, out: Path, *, rank: int = 4, num_layers: int = 2, seed: int = 1, scale: float = 20.0
) -> Path:
    """A LoRA adapter in mlx-lm's format with random (non-zero) weights, so it changes outputs."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    model, _ = load_model(model_dir)
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    linear_to_lora_layers(model, num_layers, params)
    mx.random.seed(seed)
    weights = {
        name: mx.random.normal(value.shape) * 0.05
        for name, value in tree_flatten(model.parameters())
        if name.endswith((".lora_a", ".lora_b"))
    }
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def gate_side(version, right_en, right_pt, wrong_en, wrong_pt):
    """One side of a gate report, as training/evaluation/gate.py writes it (the fields the plot reads)."""
    verdicts = {
        lang: {"right": right, "declined": round(1 - right - wrong, 4), "wrong": wrong}
        for lang, right, wrong in (("en", right_en, wrong_en), ("pt", right_pt, wrong_pt))
    }
    return {
        "version": version,
        "label": version or "base model",
        "val_loss": 1.0,
        "accuracy": (right_en + right_pt) / 2,
        "accuracy_by_lang": {"en": right_en, "pt": right_pt},
        "wrong_rate": (wrong_en + wrong_pt) / 2,
        "verdicts_by_lang": verdicts,
    }


def gated_registry(home, tiny_model_dir, tmp_path):
    """v0001 promoted over the base model, v0002 rejected, v0003 promoted: the one in production."""
    from training.lifecycle.registry import Registry

    registry = Registry(home, base_model=tiny_model_dir)
    figures = {1: (0.7, 0.6, 0.2, 0.3), 2: (0.5, 0.4, 0.4, 0.5), 3: (0.8, 0.75, 0.1, 0.15)}
    champions = {1: gate_side(None, 0.1, 0.05, 0.85, 0.9), 2: gate_side("v0001", *figures[1])}
    champions[3] = champions[2]
    for number, trigger in ((1, "first"), (2, "nightly"), (3, "admin")):
        adapter = make_adapter(tiny_model_dir, tmp_path / f"adapter-{number}", seed=number)
        version = registry.add_candidate(adapter, trigger=trigger, requested_by="test").version
        accepted = number != 2
        report = {
            "accepted": accepted,
            "candidate": gate_side(version, *figures[number]),
            "champion": champions[number],
        }
        registry.record_gate(version, report, accepted)
        if accepted:
            registry.promote(version, by="test", reason="passed the gate")
    return registry


def make_quantized_model(
    source: Path, out: Path, *, bits: int = 4, group_size: int = 32, dtype: str | None = None
) -> Path:
    """`source` quantized by mlx-lm's own converter, the way mlx-community's 4-bit models are made
    (`dtype`: cast first, so the scales are in it, as a float16 model's are)."""
    from mlx_lm import convert

    convert(str(source), str(out), quantize=True, q_group_size=group_size, q_bits=bits, dtype=dtype)
    return out
