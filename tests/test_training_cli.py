"""`python -m training`: status output, one-line errors with exit codes, and memory auto-tuning."""

from __future__ import annotations

import json

import pytest

from training.trainer.memory import GB, MemoryBudgetError, ModelShape, estimate_bytes, plan

from .helpers import cli, train_here

SMOLLM2 = ModelShape(
    weight_bytes=int(0.54 * GB),
    lora_params=1_302_528,
    layers=30,
    lora_layers=16,
    hidden=576,
    intermediate=1536,
    heads=9,
    vocab=49152,
    dtype_bytes=4,
)


def _plan(budget_gb: float, checkpoint: str = "auto"):
    return plan(
        SMOLLM2,
        batch_size=8,
        grad_accumulation=1,
        max_seq_length=256,
        longest=200,
        grad_checkpoint=checkpoint,
        budget_gb=budget_gb,
    )


def test_the_tuner_keeps_the_wanted_batch_when_it_fits_and_splits_it_when_memory_is_short():
    roomy, tight, tighter = _plan(16.0), _plan(2.5), _plan(1.2)

    assert (roomy.batch_size, roomy.grad_accumulation, roomy.grad_checkpoint) == (8, 1, False)
    assert roomy.max_seq_length == 200  # the longest example, not the 256 allowed
    assert tight.batch_size < 8 and tight.batch_size * tight.grad_accumulation == 8  # same effective batch
    assert tighter.batch_size <= tight.batch_size
    assert tighter.estimated_gb <= 1.2 and "does not fit" in tighter.reason
    assert estimate_bytes(SMOLLM2, 4, 200, True) < estimate_bytes(SMOLLM2, 4, 200, False)
    assert _plan(2.5, checkpoint="on").grad_checkpoint is True


def test_auto_checkpoints_only_when_the_budget_demands_it():
    without, with_checkpointing = (estimate_bytes(SMOLLM2, 1, 200, checkpoint) for checkpoint in (False, True))
    budget_gb = (without + with_checkpointing) / 2 / GB  # batch 1 of the longest example fits only checkpointed

    tight, ample = _plan(budget_gb), _plan(16.0)

    assert (tight.grad_checkpoint, tight.batch_size, tight.max_seq_length) == (True, 1, 200)  # nothing truncated
    assert tight.grad_accumulation == 8 and "gradient checkpointing needed to fit" in tight.reason
    assert ample.grad_checkpoint is False and "checkpointing" not in ample.reason
    assert _plan(budget_gb, checkpoint="off").max_seq_length < 200  # what "auto" spares the long examples


def test_a_budget_below_the_smallest_configuration_is_refused_naming_the_setting():
    with pytest.raises(MemoryBudgetError, match="TRAIN_MEMORY_BUDGET_GB") as refused:
        _plan(0.3)
    assert "batch 1" in str(refused.value) and "0.30 GB" in str(refused.value)


def test_cli_refuses_a_tiny_memory_budget_with_one_line_and_exit_code_2(dataset, tiny_env, monkeypatch):
    monkeypatch.setenv("TRAIN_MEMORY_BUDGET_GB", "0.001")

    result = cli("run", "--dataset", str(dataset), "--events")

    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("training: error: not enough memory to train") and "TRAIN_MEMORY_BUDGET_GB" in last
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "event": "error",
        "message": last[17:],
        "exit_code": 2,
    }


def test_the_memory_estimate_covers_what_a_real_run_used(dataset, tiny_env):
    import mlx.core as mx

    held_before = mx.get_active_memory() / 1e9  # arrays other tests in this process still hold
    run, _ = train_here(dataset, iters=4, batch_size=4, eval_every=2)

    chosen = run.config()["plan"]
    peak = max(
        m["peak_memory_gb"]
        for m in json.loads("[" + ",".join((run.dir / "metrics.jsonl").read_text().splitlines()) + "]")
        if "peak_memory_gb" in m
    )
    assert 0 < peak - held_before <= chosen["estimated_gb"]


def test_bad_setting_is_one_line_naming_the_variable_with_exit_code_2(monkeypatch):
    monkeypatch.setenv("TRAIN_ITERS", "abc")

    result = cli("run")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "training: error: invalid settings: TRAIN_ITERS: Input should be a valid integer, unable to parse "
        "string as an integer (got 'abc')"
    ]


def test_nothing_to_resume_and_a_missing_dataset_are_usage_errors(tmp_path, tiny_env):
    nothing = cli("run", "--resume")
    missing = cli("run", "--dataset", str(tmp_path / "nowhere"))

    assert nothing.returncode == 2 and "no unfinished run with a checkpoint" in nothing.stderr
    assert missing.returncode == 2 and "train.jsonl not found" in missing.stderr


def test_status_json_lists_runs_newest_first_with_their_outcome(dataset, tiny_env):
    assert json.loads(cli("status", "--json").stdout) == {"runs": []}
    first, _ = train_here(dataset, iters=2, batch_size=4, eval_every=2)
    second, _ = train_here(dataset, iters=4, batch_size=4, eval_every=2)

    result = cli("status", "--json")

    assert result.returncode == 0
    runs = json.loads(result.stdout)["runs"]
    assert [r["run_id"] for r in runs] == [second.id, first.id]
    latest = runs[0]
    assert latest["state"] == "finished" and latest["step"] == 4 and latest["total"] == 4
    assert latest["alive"] is False and latest["resumable"] is False
    assert latest["final_adapter"] == str(second.final) and latest["best_adapter"] == str(second.best)
    assert latest["initial_val_loss"] > latest["best_val_loss"] > 0
    human = cli("status")
    assert second.id in human.stdout and "finished" in human.stdout


# --- python -m training memory-plan: a model and a machine that are not this one -----------------

# Mistral-7B-Instruct-v0.3, as mlx-community's 4-bit copy describes it
MISTRAL_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32768,
    "tie_word_embeddings": False,
    "quantization": {"group_size": 64, "bits": 4},
}


@pytest.mark.parametrize("quantized", [False, True], ids=["float32", "4-bit-float16"])
def test_a_shape_from_the_config_alone_is_the_shape_of_the_loaded_model(
    tiny_model_dir, models_root, tmp_path, quantized
):
    from inference.loading import load_base
    from training.trainer.lora import apply_lora
    from training.trainer.memory import model_shape, shape_from_config

    from .models import make_quantized_model

    folder = make_quantized_model(tiny_model_dir, tmp_path / "q", dtype="float16") if quantized else tiny_model_dir
    model, _, _ = load_base(str(folder), models_root, "cpu", "quantized" if quantized else "float32")
    apply_lora(model, 2, 8, 20.0, 0.0)
    loaded = model_shape(model, 2)

    described = shape_from_config(
        json.loads((folder / "config.json").read_text()), lora_layers=2, lora_rank=8, bits=None if quantized else 32
    )

    assert loaded.dtype_bytes == (2 if quantized else 4)  # a 4-bit model computes in its scales' float16
    assert {**described.__dict__, "weight_bytes": 0} == {**loaded.__dict__, "weight_bytes": 0}
    assert described.weight_bytes == pytest.approx(loaded.weight_bytes, rel=0.05)  # norms, LoRA: not counted


def _plan_rows(stdout: str) -> dict:
    """The `estimate (GB):` rows of memory-plan's output: name -> GB."""
    rows = stdout.split("estimate (GB):\n")[1].splitlines()
    return {row.split()[0]: float(row.split()[1]) for row in rows}


def test_memory_plan_of_a_4_bit_7b_model_on_a_16_gb_machine_prints_the_plan_and_its_parts(tmp_path):
    from training.trainer.memory import estimate, parameter_count, shape_from_config

    config = tmp_path / "config.json"
    config.write_text(json.dumps(MISTRAL_7B))

    result = cli("memory-plan", "--config", config, "--ram-gb", 16)

    assert result.returncode == 0, result.stderr
    print(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("memory plan: 4-bit model, 7.25e+09 parameters (hidden 4096, 32 layers")
    assert parameter_count(MISTRAL_7B) == 7_248_023_552  # Mistral-7B-v0.3's published count
    assert lines[1].startswith("budget: 14.40 GB = 16.00 GB available of 16.00 GB RAM − 1.60 GB kept")
    # the defaults (batch 8, 512 tokens) fit only with gradient checkpointing
    assert lines[3].startswith("plan: batch 8 × 1 accumulation, max_seq_length 512, gradient checkpointing on")
    rows = _plan_rows(result.stdout)
    expected = estimate(shape_from_config(MISTRAL_7B, lora_layers=16, lora_rank=8), 8, 512, True)
    assert rows == pytest.approx(
        {name: getattr(expected, name) / GB for name in expected.__dataclass_fields__} | {"total": expected.total / GB},
        abs=0.006,
    )
    assert sum(value for name, value in rows.items() if name != "total") == pytest.approx(rows["total"], abs=0.03)
    assert rows["weights"] == pytest.approx(7_248_023_552 * (4 + 32 / 64) / 8 / GB, abs=0.006)
    assert rows["lora_state"] == pytest.approx(16 * 8 * 81920 * 4 * 5 / GB, abs=0.006)  # 7 linears of a block
    assert rows["total"] <= 14.40

    roomy = cli("memory-plan", "--config", config, "--ram-gb", 64)
    assert "gradient checkpointing off" in roomy.stdout.splitlines()[3]


def test_memory_plan_without_a_model_description_is_one_line_with_exit_code_2():
    result = cli("memory-plan", "--hidden", 4096, "--bits", 4)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "training: error: describe the model with --config FILE or --layers, --intermediate, --heads, --vocab"
    ]
