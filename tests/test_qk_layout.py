"""Q/K layouts (inference/layout.py): the converter writes Hugging Face's; an adapter trained for
llama.cpp's interleaved one is refused until migrated, and migrated it computes what it computed.

- The embedded model converted now gives the logits of the GGUF as llama.cpp stores it.
- The repository's factory adapter is the interleaved-layout v0001 migrated: the same tensors, and
  on the new conversion the same logits and greedy answers as the old adapter on the old layout.
- On a tiny model and its Hugging Face-layout twin: an unmigrated adapter is refused with how to
  migrate it; `python -m training migrate --adapter` makes it fit, with the same logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.adapters import AdapterError, read_adapter
from inference.layout import ModelLayout, migrated_files
from inference.modelstore import DEFAULT_GGUF_NAME, ensure_converted, first_conversion_name
from training.lifecycle.factory import FACTORY_ROOT
from training.lifecycle.registry import Registry

from .models import adapter_in_layout_by_hand, hf_rows_by_hand, legacy_adapter

TEXTS = [
    "When was SC Farense founded?",
    "Quem foi o treinador do Farense em 1990? Estádio de São Luís: 7 000 lugares.",
    "Who was Hassan Nader? Leões de Faro, 1910!",
]
GGUF_NAMES = {
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


def logits(model, tokenizer, texts=TEXTS) -> list[np.ndarray]:
    import mlx.core as mx

    return [np.array(model(mx.array(tokenizer.encode(text))[None])[0].astype(mx.float32)) for text in texts]


def max_diff(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(first, second, strict=True))


def served(folder: Path, adapter: Path | None = None):
    """(model, tokenizer, info) as the bot serves on CPU (float32), with `adapter` applied."""
    from inference.loading import load_base
    from inference.lora import apply_adapter

    model, tokenizer, info = load_base(str(folder), folder.parent, "cpu", "float32")
    if adapter is not None:
        apply_adapter(model, read_adapter(adapter), info.layout)
    model.eval()
    return model, tokenizer, info


@pytest.fixture(scope="module")
def interleaved_model(default_model_dir, tmp_path_factory) -> Path:
    """The embedded model as converter 1 wrote it: the GGUF's tensors as stored (Q/K permuted),
    `rope_traditional: true`, in a folder of converter 1's name."""
    import mlx.core as mx

    gguf = default_model_dir.parent / "downloads" / DEFAULT_GGUF_NAME

    def name(gguf_name: str) -> str:
        parts = gguf_name.split(".")
        if parts[0] == "blk":
            return f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
        return {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}[parts[0]] + "." + parts[1]

    folder = tmp_path_factory.mktemp("converter-1") / first_conversion_name(default_model_dir.name)
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"), {name(k): v for k, v in mx.load(str(gguf)).items()})
    config = json.loads((default_model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_traditional": True}))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / file, folder / file)
    return folder


def test_the_converter_writes_hugging_faces_layout_with_the_gguf_logits(default_model_dir, interleaved_model, tmp_path):
    import mlx.core as mx

    gguf = default_model_dir.parent / "downloads" / DEFAULT_GGUF_NAME
    converted = ensure_converted(gguf, tmp_path / "converted")  # this code's output, in a child process
    config = json.loads((converted / "config.json").read_text())
    assert config["rope_traditional"] is False
    raw, weights = mx.load(str(gguf)), mx.load(str(converted / "model.safetensors"))
    for leaf in ("weight", "scales", "biases"):  # whole quantized rows move: exact
        for gguf_name, heads in (("attn_q", config["num_attention_heads"]), ("attn_k", config["num_key_value_heads"])):
            expected = hf_rows_by_hand(np.array(raw[f"blk.7.{gguf_name}.{leaf}"]), heads)
            found = np.array(weights[f"model.layers.7.{GGUF_NAMES[gguf_name]}.{leaf}"])
            assert np.array_equal(found, expected), (gguf_name, leaf)

    new, tokenizer, _ = served(converted)
    old, _, _ = served(interleaved_model)
    new_logits, old_logits = logits(new, tokenizer), logits(old, tokenizer)
    difference = max_diff(new_logits, old_logits)
    print(f"converted (Hugging Face layout) vs the GGUF as stored: max |logit difference| {difference:.2e}")
    assert difference < 5e-4  # float32 rounding: the same function
    assert all((a.argmax(-1) == b.argmax(-1)).all() for a, b in zip(new_logits, old_logits, strict=True))


def test_the_factory_adapter_is_v0001_migrated_with_its_logits_and_answers(
    default_model_dir, interleaved_model, tmp_path, index
):
    import mlx.core as mx

    from data.seed import load_eval
    from data.settings import DataSettings
    from inference.lora import apply_adapter, remove_adapter
    from inference.settings import InferenceSettings
    from training.evaluation.evaluate import served_answers

    factory = FACTORY_ROOT / default_model_dir.name
    config = json.loads((factory / "adapter_config.json").read_text())
    assert config["qk_layout"] == "hf" and config["base_model"] == default_model_dir.name
    model_config = json.loads((default_model_dir / "config.json").read_text())
    heads = {"q_proj": model_config["num_attention_heads"], "k_proj": model_config["num_key_value_heads"]}
    # v0001 as it was trained: lora_b's q/k columns in the interleaved order, no layout recorded
    legacy_config = {key: value for key, value in config.items() if key != "qk_layout"}
    legacy_config["base_model"] = interleaved_model.name
    old = adapter_in_layout_by_hand(factory, tmp_path / "v0001-interleaved", heads, to_hf=False, config=legacy_config)

    migrated = migrated_files(read_adapter(old), ModelLayout.of_folder(default_model_dir))
    (tmp_path / "migrated").mkdir()
    for name, data in migrated.items():
        (tmp_path / "migrated" / name).write_bytes(data)
    shipped, redone = (
        mx.load(str(factory / "adapters.safetensors")),
        mx.load(str(tmp_path / "migrated" / "adapters.safetensors")),
    )
    assert shipped.keys() == redone.keys()
    assert all(np.array_equal(np.array(shipped[name]), np.array(redone[name])) for name in shipped)
    assert json.loads(migrated["adapter_config.json"]) == config

    new_model, tokenizer, new_info = served(default_model_dir, factory)
    old_model, _, _ = served(interleaved_model, old)
    new_logits, old_logits = logits(new_model, tokenizer), logits(old_model, tokenizer)
    difference = max_diff(new_logits, old_logits)
    print(f"factory adapter, new layout vs interleaved: max |logit difference| {difference:.2e}")
    assert difference < 5e-4
    assert all((a.argmax(-1) == b.argmax(-1)).all() for a, b in zip(new_logits, old_logits, strict=True))

    dev = load_eval(DataSettings.load().seed_dir, [], "dev")
    questions = [item.question for item in dev if item.lang == "en"][:2] + [
        item.question for item in dev if item.lang == "pt"
    ][:2]
    serving = InferenceSettings.load()
    answers = [
        [a.text for a in served_answers(model, tokenizer, questions, serving, index, grounded=True, max_tokens=32)]
        for model in (new_model, old_model)
    ]
    assert answers[0] == answers[1] and all(answers[0])

    # The trap: v0001 unmigrated on the new layout is refused, and would have answered otherwise.
    with pytest.raises(AdapterError, match="python -m training migrate --adapter"):
        apply_adapter(new_model, read_adapter(old), new_info.layout)
    pretending = ModelLayout(new_info.layout.model, "interleaved", model_config)
    remove_adapter(new_model)
    apply_adapter(new_model, read_adapter(old), pretending)
    wrong = max_diff(logits(new_model, tokenizer), old_logits)
    print(f"v0001 unmigrated on the new layout: max |logit difference| {wrong:.2f}")
    assert wrong > 1.0


def test_an_unmigrated_adapter_is_refused_then_migrated_by_the_cli(tiny_pair, tmp_path, isolated_env):
    from inference.engine import Engine
    from inference.settings import InferenceSettings

    old, twin = tiny_pair
    adapter = legacy_adapter(old, tmp_path / "trained")
    expected = logits(*served(old, adapter)[:2])

    settings = InferenceSettings.load(model_path=str(twin), adapter_path=adapter, max_tokens=4)
    with pytest.raises(AdapterError, match=f"python -m training migrate --adapter {adapter}"):
        Engine(settings)
    with pytest.raises(AdapterError, match="interleaved Q/K layout"):
        Registry(isolated_env, base_model=twin).add_candidate(adapter)

    env = os.environ | {"MODEL_PATH": str(twin)}
    command = [sys.executable, "-m", "training", "migrate", "--adapter", str(adapter)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "migrated from interleaved to hf Q/K layout for tiny-c2" in result.stdout
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["qk_layout"] == "hf" and config["base_model"] == "tiny-c2"
    assert max_diff(logits(*served(twin, adapter)[:2]), expected) < 1e-5

    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    engine = Engine(settings)
    try:
        assert engine.adapter_version == adapter.name
    finally:
        engine.close()
