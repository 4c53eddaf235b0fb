"""Convert a llama-architecture GGUF file into an mlx-lm model folder in Hugging Face's layout.

`mx.load` reads GGUF natively (Q4_0/Q4_1/Q8_0 stay quantized with group size 32). llama.cpp stores
Q/K rows permuted for its interleaved RoPE; they are put back in Hugging Face's order here (whole
rows move, so packed quantized rows, their scales and biases stay exact) and the config says
`rope_traditional: false`, as Hugging Face's does: then `mlx_lm.fuse --export-gguf`, PEFT and
every Hugging Face tool read the folder's weights right (inference/layout.py). The tokenizer is a
byte-level BPE rebuilt from the GGUF vocabulary and merges; the chat template comes from metadata.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_CONTROL_TOKEN = 3
# Raised whenever the converter's output changes: converted folders carry it in their name
# (inference/modelstore.py), so existing installs convert again. 2: Q/K in Hugging Face's order.
CONVERTER_VERSION = 2


class GGUFError(ValueError):
    """The file is not a GGUF this converter understands."""


def convert_gguf_isolated(gguf: Path, out: Path) -> None:
    """Convert in a child process: MLX's GGUF reader can crash the process on a corrupt file."""
    result = subprocess.run(
        [sys.executable, "-m", "inference.gguf", str(gguf), str(out)], capture_output=True, text=True
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines and result.returncode > 0 else f"the reader crashed (exit {result.returncode})"
        raise GGUFError(f"{gguf}: not a readable GGUF file ({reason})")


def convert_gguf(gguf: Path, out: Path) -> None:
    import mlx.core as mx

    with open(gguf, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GGUFError(f"{gguf}: not a readable GGUF file (no GGUF magic)")

    try:
        weights, meta = mx.load(str(gguf), return_metadata=True)
    except Exception as error:
        raise GGUFError(f"{gguf}: not a readable GGUF file ({error})") from error
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{gguf}: architecture {arch!r} is not supported (only llama)")

    heads = int(_scalar(meta, "llama.attention.head_count"))
    kv_heads = int(_scalar(meta, "llama.attention.head_count_kv", heads))
    converted = {_mlx_name(name): _hf_rows(name, array, heads, kv_heads) for name, array in weights.items()}
    quantized = {name.rsplit(".", 1)[0] for name in converted if name.endswith(".scales")}
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), converted, metadata={"format": "mlx"})

    config = _model_config(meta, tied="lm_head.weight" not in converted)
    if quantized:
        config["quantization"] = _quant_config(converted, quantized, config)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(meta, out)


def qk_row_order(rows: int, heads: int, *, to_hf: bool) -> np.ndarray:
    """Indices of Q or K rows (`heads` heads) in one layout, in the order of the other:
    `rows_in_new_order = rows[indices]`.

    llama.cpp's `permute()` (convert_hf_to_gguf.py) takes each head's rows from two halves (Hugging
    Face's rotate-half RoPE) to interleaved pairs; `to_hf` undoes it.
    """
    if rows % (2 * heads):
        raise GGUFError(f"{rows} Q/K rows do not split into {heads} heads of pairs")
    half = rows // heads // 2
    pairs = (heads, half, 2) if to_hf else (heads, 2, half)
    return np.arange(rows).reshape(pairs).swapaxes(1, 2).reshape(-1)


def _hf_rows(name: str, array, heads: int, kv_heads: int):
    """A GGUF tensor with its Q/K rows in Hugging Face's order (other tensors as they are)."""
    import mlx.core as mx

    for module, count in (("attn_q", heads), ("attn_k", kv_heads)):
        if name.split(".")[2:3] == [module]:
            return array[mx.array(qk_row_order(array.shape[0], count, to_hf=True))]
    return array


def _mlx_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "blk":
        layer, module, leaf = parts[1], parts[2], parts[3]
        if module not in _LAYER_NAMES:
            raise GGUFError(f"unknown GGUF tensor {name}")
        return f"model.layers.{layer}.{_LAYER_NAMES[module]}.{leaf}"
    if parts[0] not in _TOP_NAMES:
        raise GGUFError(f"unknown GGUF tensor {name}")
    return ".".join([_TOP_NAMES[parts[0]], *parts[1:]])


def _quant_config(weights: dict, modules: set[str], config: dict) -> dict:
    """mlx-lm's quantization config: the most common (group size, bits) plus per-module overrides.

    GGUF files mix types (SmolLM2's Q4_1 file keeps token_embd in Q8_0), so each module's shape is
    derived from its packed width and its known input dimension.
    """
    shapes = {module: _quant_shape(weights, module, _input_dim(module, config)) for module in modules}
    counts: dict[tuple[int, int], int] = {}
    for shape in shapes.values():
        counts[shape] = counts.get(shape, 0) + 1
    group_size, bits = max(counts, key=counts.get)
    result: dict = {"group_size": group_size, "bits": bits}
    for module, (g, b) in sorted(shapes.items()):
        if (g, b) != (group_size, bits):
            result[module] = {"group_size": g, "bits": b}
    return result


def _input_dim(module: str, config: dict) -> int:
    return config["intermediate_size"] if module.endswith("down_proj") else config["hidden_size"]


def _quant_shape(weights: dict, module: str, in_features: int) -> tuple[int, int]:
    packed, scales = weights[f"{module}.weight"], weights[f"{module}.scales"]
    total_bits = packed.shape[-1] * 32
    if total_bits % in_features or in_features % scales.shape[-1]:
        raise GGUFError(f"cannot infer the quantization of {module}")
    return in_features // scales.shape[-1], total_bits // in_features


def _scalar(meta: dict, key: str, default=None):
    value = meta.get(key, default)
    if value is None:
        raise GGUFError(f"GGUF metadata lacks {key}")
    return value.item() if hasattr(value, "item") else value


def _model_config(meta: dict, tied: bool) -> dict:
    hidden = int(_scalar(meta, "llama.embedding_length"))
    heads = int(_scalar(meta, "llama.attention.head_count"))
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_scalar(meta, "llama.block_count")),
        "intermediate_size": int(_scalar(meta, "llama.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(meta, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_scalar(meta, "llama.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_scalar(meta, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_scalar(meta, "llama.rope.freq_base", 10000.0)),
        "rope_traditional": False,
        "max_position_embeddings": int(_scalar(meta, "llama.context_length", 2048)),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": tied,
        "bos_token_id": int(_scalar(meta, "tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(_scalar(meta, "tokenizer.ggml.eos_token_id")),
        "source": str(meta.get("general.name", "gguf")),
    }


def _write_tokenizer(meta: dict, out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise GGUFError(f"tokenizer {meta.get('tokenizer.ggml.model')!r} is not supported (only gpt2 BPE)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = np.array(meta["tokenizer.ggml.token_type"])
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") == "smollm":  # SmolLM splits digits one by one
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [tokens[i] for i in np.flatnonzero(types == _CONTROL_TOKEN)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.save(str(out / "tokenizer.json"))

    def token(key: str) -> str | None:
        index = meta.get(key)
        return tokens[int(index.item())] if index is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id") or token("tokenizer.ggml.eos_token_id"),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_scalar(meta, "llama.context_length", 2048)),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    try:
        convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
    except GGUFError as error:
        sys.exit(str(error))
