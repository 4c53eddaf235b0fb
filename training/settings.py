"""Settings of the training package: environment variables with the TRAIN_ prefix (and `.env`).

The defaults make the embedded SmolLM2-135M learn a ~1,500-pair corpus in about an hour on a laptop
CPU (minutes on an M1): rank-8 LoRA on the last 16 of 30 layers, batch 8, sequences up to 256 tokens.
FARENSE_HOME, MODEL_PATH and SYSTEM_PROMPT come from `InferenceSettings`, so training and serving
always agree on them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from common.settings import Settings

# Settings that change the numbers a run produces. Resuming compares them; the others (how often to
# save, how much memory there is) may change between a crash and its resume.
FINGERPRINTED = (
    "iters",
    "batch_size",
    "learning_rate",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "grad_accumulation",
    "lora_rank",
    "lora_scale",
    "lora_dropout",
    "lora_layers",
    "max_seq_length",
    "eval_every",
    "val_batches",
    "patience",
    "min_delta",
    "seed",
)


class TrainingSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="TRAIN_", env_file=".env", extra="ignore")

    dataset: Path | None = Field(
        default=None,
        description="Folder with train.jsonl, valid.jsonl, manifest.json; empty = the newest one "
        "`python -m data build` wrote ($FARENSE_HOME/datasets/latest)",
    )
    iters: int = Field(default=600, ge=1, description="Optimizer steps (each = grad_accumulation batches)")
    batch_size: int = Field(default=8, ge=1, description="Wanted batch; the memory tuner may split it")
    learning_rate: float = Field(default=2e-4, ge=0.0, le=1.0, description="Peak LR (with lora_scale 20)")
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0, description="Cosine decays to lr × this")
    warmup_steps: int = Field(default=30, ge=0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    grad_clip: float = Field(default=1.0, ge=0.0, description="Max global gradient norm; 0 = off")
    grad_accumulation: int = Field(default=1, ge=1)
    grad_checkpoint: Literal["auto", "on", "off"] = "auto"
    lora_rank: int = Field(default=8, ge=1, le=512)
    lora_scale: float = Field(default=20.0, gt=0.0)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_layers: int = Field(default=16, ge=1, description="Last N transformer blocks get LoRA")
    max_seq_length: int = Field(
        default=512,
        ge=16,
        le=32768,
        description=("Longer examples are cut; grounded prompts (facts + question) run to ~370 tokens"),
    )
    eval_every: int = Field(default=50, ge=1)
    val_batches: int = Field(default=50, ge=1)
    patience: int = Field(default=2, ge=1, description="Evaluations without improvement before stopping")
    min_delta: float = Field(default=0.001, ge=0.0, description="Smaller val-loss gains do not count")
    checkpoint_every: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    memory_budget_gb: float | None = Field(
        default=None, gt=0.0, description="Empty = available RAM minus a safety margin"
    )
    seed: int = Field(default=0, ge=0)
    init_adapter: Path | None = Field(
        default=None,
        description="Adapter folder whose LoRA weights the run starts from (a warm start; it needs the run's "
        "LoRA layers, rank, scale and keys); empty = fresh LoRA weights",
    )
    distributed: str = Field(
        default="",
        description="Data-parallel over mlx.launch: N = N local processes (ring on 127.0.0.1), or an "
        "mlx.launch JSON hostfile; empty = one process (README: Training on several machines)",
    )

    @field_validator("grad_checkpoint", mode="before")
    @classmethod
    def _boolish(cls, value):
        aliases = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off", "": "auto"}
        if isinstance(value, bool):
            return "on" if value else "off"
        return aliases.get(str(value).strip().lower(), str(value).strip().lower())

    @field_validator("distributed", mode="before")
    @classmethod
    def _ranks_or_hostfile(cls, value):
        text = "" if value is None else str(value).strip()
        if text.lower() in ("", "off", "no", "false", "none", "0", "1"):
            return ""
        if text.lstrip("-").isdigit() and int(text) < 2:
            raise ValueError("a number of local processes must be at least 2")
        return text

    @field_validator("memory_budget_gb", "dataset", "init_adapter", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if value == "" else value

    @classmethod
    def load(cls, **overrides) -> TrainingSettings:
        """Read the environment; CLI flags come in as overrides (None: not given). Raises SettingsError."""
        return super().load(**{k: v for k, v in overrides.items() if v is not None})

    def training_values(self) -> dict:
        return {name: getattr(self, name) for name in FINGERPRINTED}


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Every TRAIN_X is also --x: `python -m training run` takes them, and the pipeline reads them."""
    for name, field in TrainingSettings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            metavar="VALUE",
            help=f"{field.description or ''} (TRAIN_{name.upper()}, default {field.default})",
        )


def setting_flags(args: argparse.Namespace) -> dict:
    """The --x values given (None: not given), by setting name."""
    return {key.removeprefix("setting_"): value for key, value in vars(args).items() if key.startswith("setting_")}


def settings_with_flags(argv: Sequence[str]) -> TrainingSettings:
    """The settings a `python -m training run` given `argv` trains with (its other flags ignored):
    the pipeline plans a run's steps and LoRA layout from them. Raises SettingsError."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_setting_flags(parser)
    known, _ = parser.parse_known_args(list(argv))
    return TrainingSettings.load(**setting_flags(known))
