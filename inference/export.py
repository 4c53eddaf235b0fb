"""Models that travel: the base model with an adapter fused in, as a Hugging Face-layout folder
(config.json, safetensors, tokenizer) that `mlx_lm.load` reads; the same as a GGUF file, written
by mlx-lm's own exporter; and the adapter alone in PEFT's format, for Hugging Face users.

Fusing happens on float weights: a quantized base is dequantized first, as the bot serves it on
CPU, so the fused model computes what base + adapter computes (in float32 exactly, to rounding).
Both the GGUF and PEFT forms assume Hugging Face's Q/K layout (inference/layout.py): a base in
llama.cpp's interleaved one is refused rather than written wrong.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

from .adapters import WEIGHTS_FILE, Adapter, AdapterError
from .layout import HF, LAYOUTS, ModelLayout
from .lora import apply_adapter

DTYPES = ("float16", "bfloat16", "float32")
GGUF_MODEL_TYPES = ("llama", "mistral", "mixtral")  # what mlx-lm's GGUF exporter writes
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's PeftModel wraps a LoraModel wrapping the transformers model
# The base model's tokenizer files, copied as they are: a tokenizer saved again by this machine's
# transformers may name a class other versions lack.
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template*",
    "generation_config.json",
)
_CONTROL_TOKEN = 3


def fuse(model_folder: Path, adapter: Adapter, layout: ModelLayout, out: Path, dtype: str = "float16") -> None:
    """Write the base model in `model_folder` with `adapter` fused into its weights to `out`."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.utils import dequantize_model, load_model, save_config, save_model

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    model, config = load_model(Path(model_folder))
    model = dequantize_model(model)
    model.set_dtype(mx.float32)
    for key in ("quantization", "quantization_config"):
        config.pop(key, None)
    apply_adapter(model, adapter, layout)
    fused = [(name, module.fuse()) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    model.update_modules(tree_unflatten(fused))
    model.set_dtype(getattr(mx, dtype))
    config["torch_dtype"] = dtype  # what transformers loads it as
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, donate_model=True)
    save_config(config, config_path=out / "config.json")
    for pattern in TOKENIZER_FILES:
        for file in Path(model_folder).glob(pattern):
            shutil.copyfile(file, out / file.name)


def write_gguf(fused_folder: Path, out_file: Path) -> None:
    """A GGUF of a fused (unquantized) folder by mlx-lm's exporter, which puts Q/K in llama.cpp's
    order from Hugging Face's; a byte-level BPE tokenizer is then described as llama.cpp reads it
    (mlx-lm describes every vocabulary as SentencePiece)."""
    import mlx.core as mx
    from mlx_lm.gguf import convert_to_gguf

    config = json.loads((fused_folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") not in GGUF_MODEL_TYPES:
        raise AdapterError(f"mlx-lm exports GGUF for {', '.join(GGUF_MODEL_TYPES)}, not {config.get('model_type')!r}")
    if config.get("rope_traditional"):
        raise AdapterError(f"the model has {LAYOUTS['interleaved']}: a GGUF written from it would be wrong")
    weights = {}
    for file in sorted(fused_folder.glob("model*.safetensors")):
        weights |= mx.load(str(file))
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        convert_to_gguf(fused_folder, weights, config, str(out_file))
    weights, metadata = mx.load(str(out_file), return_metadata=True)
    metadata["general.name"] = out_file.stem
    mx.save_gguf(str(out_file), weights, metadata | _bpe_tokenizer_metadata(fused_folder, metadata))


def _bpe_tokenizer_metadata(folder: Path, metadata: dict) -> dict:
    """llama.cpp's description of a byte-level BPE tokenizer (GPT-2 style: merges, pre-tokenizer,
    special tokens as control tokens, chat template), in place of mlx-lm's; nothing for any other
    kind of tokenizer."""
    import mlx.core as mx
    import numpy as np

    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model, pre = tokenizer.get("model") or {}, tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(step.get("type"), step.get("individual_digits")) for step in steps]
    if model.get("type") != "BPE" or not kinds or kinds[-1][0] != "ByteLevel":
        return {}
    added = tokenizer.get("added_tokens") or []
    types = np.array(metadata["tokenizer.ggml.token_type"])
    types[[token["id"] for token in added if token.get("special")]] = _CONTROL_TOKEN
    described = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.merges": [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]],
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.uint32),
    }
    if kinds == [("ByteLevel", None)]:
        described["tokenizer.ggml.pre"] = "gpt2"
    elif kinds == [("Digits", True), ("ByteLevel", None)]:  # inference/gguf.py reads it back so
        described["tokenizer.ggml.pre"] = "smollm"
    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    vocab = (model.get("vocab") or {}) | {token["content"]: token["id"] for token in added}
    pad = settings.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad  # some configs spell out the AddedToken
    if pad in vocab:
        described["tokenizer.ggml.padding_token_id"] = mx.array(vocab[pad], dtype=mx.uint32)
    described["tokenizer.ggml.add_bos_token"] = mx.array(bool(settings.get("add_bos_token")))
    template = settings.get("chat_template")
    template_file = folder / "chat_template.jinja"  # where newer transformers save it
    if template is None and template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    if template:
        described["tokenizer.chat_template"] = template
    return described


def write_peft(adapter: Adapter, layout: ModelLayout, out: Path, base_model_name_or_path: str) -> None:
    """The adapter as a PEFT LoRA folder: adapter_config.json and adapter_model.safetensors.

    PEFT computes W + (lora_alpha / r)·B·A with lora_A.weight (r, in) and lora_B.weight (out, r);
    mlx-lm computes W + s·(A·B)ᵀ with lora_a (in, r) and lora_b (r, out). So the tensors are
    transposed and the scale goes into lora_alpha = s·r.
    """
    import mlx.core as mx
    import numpy as np
    from safetensors.numpy import save_file

    if layout.qk_layout != HF:
        raise AdapterError(f"PEFT adapters are for {LAYOUTS[HF]}; the base model {layout.model} has the other one")
    layout.check(adapter)
    tensors, layers, modules = {}, set(), set()
    for name, value in mx.load(str(adapter.path / WEIGHTS_FILE)).items():
        module, leaf = name.rsplit(".", 1)
        peft_leaf = {"lora_a": "lora_A", "lora_b": "lora_B"}[leaf]
        tensors[f"{PEFT_PREFIX}{module}.{peft_leaf}.weight"] = np.ascontiguousarray(
            np.array(value.astype(mx.float32)).T
        )
        parts = module.split(".")
        layers.add(int(parts[parts.index("layers") + 1]))
        modules.add(parts[-1])
    spec = adapter.spec
    alpha = spec.scale * spec.rank
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "r": spec.rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": spec.dropout,
        "target_modules": sorted(modules),
        "layers_to_transform": sorted(layers),
        "layers_pattern": "layers",
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# LoRA adapter for {base_model_name_or_path}\n\nA PEFT LoRA adapter (r={spec.rank}, "
        f"lora_alpha={config['lora_alpha']}) trained by the Farense bot on {layout.model}. Weights that "
        "differ from those (another quantization or precision of the model) give close, not identical, "
        "outputs; the fused model exported beside this folder gives the trained ones.\n",
        encoding="utf-8",
    )
