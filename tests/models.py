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


# --- Q/K layouts, written out row by row (independent of inference/gguf.py's index arithmetic) -----


def hf_rows_by_hand(rows, heads: int):
    """llama.cpp's interleaved Q/K rows (a numpy array, rows first) in Hugging Face's order: per
    head, the even rows then the odd ones."""
    import numpy as np

    size = rows.shape[0] // heads
    out = np.empty_like(rows)
    for head in range(heads):
        for i in range(size // 2):
            out[head * size + i] = rows[head * size + 2 * i]
            out[head * size + size // 2 + i] = rows[head * size + 2 * i + 1]
    return out


def interleaved_rows_by_hand(rows, heads: int):
    """The inverse of `hf_rows_by_hand`: Hugging Face's Q/K rows in llama.cpp's interleaved order."""
    import numpy as np

    size = rows.shape[0] // heads
    out = np.empty_like(rows)
    for head in range(heads):
        for i in range(size // 2):
            out[head * size + 2 * i] = rows[head * size + i]
            out[head * size + 2 * i + 1] = rows[head * size + size // 2 + i]
    return out


def legacy_adapter(model_dir: Path, out: Path, seed: int = 1) -> Path:
    """An adapter as trained before Q/K layouts were recorded: its base model's name, no qk_layout."""
    folder = make_adapter(model_dir, out, seed=seed)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"base_model": model_dir.name}))
    return folder


def hf_layout_twin(model_dir: Path, out: Path) -> Path:
    """The same (unquantized) model in Hugging Face's Q/K layout: Q/K rows reordered by hand,
    `rope_traditional: false`. It computes what `model_dir` computes."""
    import mlx.core as mx
    import numpy as np

    config = json.loads((model_dir / "config.json").read_text())
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    weights = {}
    for name, value in mx.load(str(model_dir / "model.safetensors")).items():
        module = name.split(".")[-2]
        weights[name] = mx.array(hf_rows_by_hand(np.array(value), heads[module])) if module in heads else value
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps({**config, "rope_traditional": False}, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(model_dir / name, out / name)
    return out


def adapter_in_layout_by_hand(adapter_dir: Path, out: Path, heads: dict[str, int], *, to_hf: bool, config: dict):
    """A copy of an adapter with its q_proj/k_proj lora_b columns reordered by hand (`heads`: per
    module name) and `config` as its adapter_config.json."""
    import mlx.core as mx
    import numpy as np

    reorder = hf_rows_by_hand if to_hf else interleaved_rows_by_hand
    weights = {}
    for name, value in mx.load(str(adapter_dir / "adapters.safetensors")).items():
        module = name.split(".")[-2]
        if name.endswith(".lora_b") and module in heads:
            value = mx.array(np.ascontiguousarray(reorder(np.array(value).T, heads[module]).T))
        weights[name] = value
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights, metadata={"format": "mlx"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out
