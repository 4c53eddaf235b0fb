"""Settings of the adapter lifecycle (registry, gate, pipeline), from the environment and `.env`.

Names are used as they are (KEEP_ADAPTERS, GATE_..., PIPELINE_...), without the TRAIN_ prefix:
they steer what happens around training, not the training run itself.
"""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.settings import Settings


class LifecycleSettings(Settings):
    keep_adapters: int = Field(
        default=10, ge=1, description="Registry versions kept; production and the previous one always are"
    )
    keep_runs: int = Field(
        default=5,
        ge=1,
        description="Training runs kept (the registry keeps its own copy of their adapters); "
        "the checkpoints of kept runs that ended are deleted",
    )
    gate_min_improvement: float = Field(
        default=0.005,
        ge=0.0,
        lt=1.0,
        description="Relative val-loss gain a candidate needs: loss ≤ champion's × (1 − this)",
    )
    gate_max_regression: float = Field(
        default=0.005,
        ge=0.0,
        lt=1.0,
        description="On the champion's own validation batches the candidate may lose at most this (relative)",
    )
    gate_allowed_accuracy_drop: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Absolute drop of eval accuracy tolerated (0.02 = two percentage points)",
    )
    gate_allowed_wrong_rise: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Absolute rise of the share of wrong answers tolerated (a decline is not wrong)",
    )
    gate_eval_limit: int = Field(default=60, ge=2, le=1000, description="Dev eval questions asked, half EN, half PT")
    gate_max_tokens: int = Field(default=64, ge=8, le=2048, description="Answer length cap in the gate")
    gate_max_degenerate: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Share of empty/repetitive answers tolerated (or the champion's share, if higher)",
    )
    retrain_mode: Literal["auto", "full"] = Field(
        default="auto",
        description="auto: continue the production adapter on what is new when it was trained on the same "
        "base model, shipped knowledge, seed, data formats and LoRA layout, else from scratch; full: always "
        "from scratch (README: Warm-started training)",
    )
    warm_replay_ratio: float = Field(
        default=2.0, ge=0.0, le=100.0, description="Warm start: examples replayed from the rest per new example"
    )
    warm_epochs: float = Field(
        default=4.0, gt=0.0, le=100.0, description="Warm start: passes over the new examples and their replay"
    )
    warm_learning_rate: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Warm start: peak learning rate (empty: the training's LEARNING_RATE)"
    )
    warm_min_steps: int = Field(default=10, ge=1, description="Warm start: fewest optimizer steps")
    warm_max_steps: int = Field(
        default=60, ge=1, description="Warm start: most optimizer steps (~8 s each for the embedded model on 2 cores)"
    )
    pipeline_train_args: str = Field(
        default="", description="Extra `python -m training run` flags, shell-quoted, e.g. '--iters 300'"
    )

    @field_validator("warm_learning_rate", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if value == "" else value

    @field_validator("pipeline_train_args")
    @classmethod
    def _splittable(cls, value: str) -> str:
        shlex.split(value)  # raises ValueError (e.g. "No closing quotation"), reported by explain()
        return value

    @model_validator(mode="after")
    def _steps_in_order(self) -> LifecycleSettings:
        if self.warm_min_steps > self.warm_max_steps:
            raise ValueError("WARM_MIN_STEPS must not exceed WARM_MAX_STEPS")
        return self

    @property
    def train_args(self) -> list[str]:
        return shlex.split(self.pipeline_train_args)
