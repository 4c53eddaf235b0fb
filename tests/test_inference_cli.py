"""`python -m inference`: one JSON object on stdout in every case; the model store and settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import SettingsError
from inference.gguf import CONVERTER_VERSION, GGUFError, convert_gguf
from inference.modelstore import DEFAULT_MODEL_NAME, ModelNotFound, ensure_converted, resolve_model
from inference.settings import InferenceSettings

from .models import make_adapter

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, **env: str) -> tuple[int, dict, str]:
    result = subprocess.run(
        [sys.executable, "-m", "inference", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got: {result.stdout!r}"
    return result.returncode, json.loads(lines[0]), result.stderr


def test_cli_answers_with_json(tiny_model_dir):
    code, out, err = run_cli("Quem foi Hassan Nader?", "--max-tokens", "5", MODEL_PATH=str(tiny_model_dir))
    assert code == 0 and out["status"] == "ok"
    assert set(out) >= {"prompt", "response", "status", "model", "adapter", "tokens", "seconds", "guard"}
    assert out["prompt"] == "Quem foi Hassan Nader?" and out["tokens"] > 0 and out["adapter"] is None
    assert "BLAS" in err  # the log line naming BLAS and dtype goes to stderr


def test_cli_on_a_fresh_home_opens_the_store_and_answers_from_the_facts(tiny_model_dir, isolated_env):
    assert not (isolated_env / "farense.db").exists()
    code, out, _ = run_cli("When was Farense founded?", "--max-tokens", "3", MODEL_PATH=str(tiny_model_dir))
    assert code == 0 and out["status"] == "ok" and out["facts"]  # grounded, not answered blind
    assert (isolated_env / "farense.db").is_file()


def test_cli_uses_given_adapter(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "a1")
    # In the domain: on a home with the knowledge base, "Olá" is declined without the model.
    code, out, _ = run_cli(
        "Quando foi fundado o Farense?", "--max-tokens", "3", "--adapter", str(adapter), MODEL_PATH=str(tiny_model_dir)
    )
    assert code == 0 and out["adapter"] == "a1"


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--adapter", "/no/such/adapter"], {}, "adapter not found"),
        ([], {"MODEL_PATH": "/no/such/model.gguf"}, "GGUF file not found"),
        ([], {"MAX_TOKENS": "lots"}, "MAX_TOKENS"),
    ],
)
def test_cli_errors_are_json(tiny_model_dir, args, env, message):
    env = {"MODEL_PATH": str(tiny_model_dir), **env}
    code, out, _ = run_cli("Quando foi fundado o Farense?", *args, **env)
    assert code == 1 and out["status"] == "error" and out["prompt"] == "Quando foi fundado o Farense?"
    assert message in out["error"] and "Traceback" not in out["error"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: prompt"),
        (["Quando foi fundado o Farense?", "--max-tokens", "abc"], "argument --max-tokens: invalid int value: 'abc'"),
        (["Quando foi fundado o Farense?", "--temperature", "hot"], "argument --temperature: invalid float value"),
        (
            ["Quando foi fundado o Farense?", "--adapter", "a1", "--no-adapter"],
            "argument --no-adapter: not allowed with argument --adapter",
        ),
        (["Quando foi fundado o Farense?", "--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_cli_usage_errors_are_json_with_argparses_exit_status(args, message):
    code, out, err = run_cli(*args)
    assert code == 2 and set(out) == {"prompt", "status", "error"}
    assert out["status"] == "error" and out["prompt"] is None
    assert message in out["error"] and "usage: python -m inference" in out["error"]
    assert f"python -m inference: error: {message}" in err  # argparse's own text, for a person


def test_cli_help_stays_plain_text():
    result = subprocess.run(
        [sys.executable, "-m", "inference", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m inference")
    assert "--max-tokens" in result.stdout and '"status"' not in result.stdout


def test_cli_real_default_model(default_model_dir):
    code, out, _ = run_cli("Quem foi Hassan Nader?", "--max-tokens", "24", "--no-adapter")
    assert code == 0 and out["model"] == DEFAULT_MODEL_NAME and out["response"].strip()


def test_default_model_conversion(default_model_dir):
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["rope_traditional"] is False and config["tie_word_embeddings"] is True
    assert config["quantization"] == {"group_size": 32, "bits": 4, "model.embed_tokens": {"group_size": 32, "bits": 8}}
    tokenizer_config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"] and tokenizer_config["eos_token"] == "<|im_end|>"
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(default_model_dir)
    text = "O Farense foi fundado a 1 de abril de 1910, em Faro!"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_conversion_is_idempotent_and_never_half_written(default_model_dir, tmp_path):
    gguf = default_model_dir.parent / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target = tmp_path / "converted"
    (tmp_path / ".converted.leftover").mkdir()  # a crashed earlier conversion's staging folder
    assert ensure_converted(gguf, target) == target
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert ensure_converted(gguf, target) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted.") and p.name != ".converted.leftover"]
    stat = gguf.stat()  # the converter's version in the name: a new converter converts again beside it
    assert resolve_model(str(gguf), tmp_path / "models").endswith(
        f"{gguf.stem}-{stat.st_size:x}-{int(stat.st_mtime):x}-c{CONVERTER_VERSION}"
    )


def test_garbage_gguf_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(256))
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        ensure_converted(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(GGUFError, match="no GGUF magic"):
        convert_gguf(not_gguf, tmp_path / "out")


@pytest.mark.parametrize(
    "value, message",
    [
        ("/nowhere/model.gguf", "GGUF file not found"),
        ("not a model", "neither a model folder"),
    ],
)
def test_bad_model_path(tmp_path, value, message):
    with pytest.raises(ModelNotFound, match=message):
        resolve_model(value, tmp_path)


def test_folder_without_config_refused(tmp_path):
    with pytest.raises(ModelNotFound, match="without config.json"):
        resolve_model(str(tmp_path), tmp_path / "models")


def test_settings_errors_name_the_setting(monkeypatch):
    monkeypatch.setenv("TEMPERATURE", "hot")
    monkeypatch.setenv("MAX_TOKENS", "0")
    with pytest.raises(SettingsError) as error:
        InferenceSettings.load()
    lines = str(error.value).splitlines()[1:]
    assert any(line.startswith("TEMPERATURE:") for line in lines)
    assert any(line.startswith("MAX_TOKENS:") for line in lines)


def test_missing_blas_falls_back_with_a_log_line():
    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO);"
        "from inference.backend import blas_in_use;"
        "import mlx.core as mx; mx.eval(mx.ones((4, 4)) @ mx.ones((4, 4))); print(blas_in_use().name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "BLAS_PATH": "/no/libopenblas.so"},
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "reference" and "could not load BLAS /no/libopenblas.so" in result.stderr
