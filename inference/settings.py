"""Settings of the inference package, read from the environment and `.env`.

Every package has its own settings class; none reads `os.environ` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant for fans of SC Farense, the football club of Faro, Portugal. "
    "Reply in the same language as the user. Keep answers short and factual; if you do not "
    "know, say so."
)
# The share of a question's telling words (weighted by rarity) a fact must hold, tuned with
# bench/retrieval.py on the dev questions: 0.5 rejects 11 of 15 out-of-domain ones there, while an
# absolute bm25 floor declined one-rare-word questions ("What are Farense's colours?").
RETRIEVAL_MIN_SCORE = 0.5


class SettingsError(ValueError):
    """A setting has an invalid value; the message names it in one line per problem."""


def explain(error: ValidationError, settings_class: type[BaseSettings]) -> SettingsError:
    """Turn pydantic's report into one clear line per setting, named as in the environment."""
    prefix = settings_class.model_config.get("env_prefix", "")
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:  # a whole-model check names its settings itself
            lines.append(message)
            continue
        name = (prefix + str(problem["loc"][0])).upper()
        named = message if message.startswith(name) else f"{name}: {message}"
        lines.append(f"{named} (got {problem.get('input')!r})")
    return SettingsError("invalid settings:\n" + "\n".join(lines))


def default_home() -> Path:
    return Path.home() / ".farense"


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    farense_home: Path = Field(default_factory=default_home)
    models_dir: Path | None = Field(
        default=None, description="Converted-model cache; empty = $FARENSE_HOME/models"
    )
    model_path: str = Field(
        default="", description="Empty = embedded SmolLM2; else a model folder, a .gguf or a hub id"
    )
    adapter_path: Path | None = None
    max_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.3, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.15, ge=1.0, le=2.0)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    device: Literal["auto", "cpu", "gpu"] = "auto"
    cpu_dtype: Literal["float32", "bfloat16", "float16", "quantized"] = "float32"
    grounding: bool = Field(
        default=True, description="Answer from facts retrieved from the knowledge base (false = model alone)"
    )
    retrieval_top_k: int = Field(default=3, ge=1, le=10, description="Facts put in the prompt at most")
    retrieval_min_score: float = Field(
        default=RETRIEVAL_MIN_SCORE, ge=0.0, le=1.0,
        description="Share (0-1, rare words weigh more) of the question's words a fact must hold to"
                    " be used; when no fact does, the bot declines",
    )
    grounding_context_tokens: int = Field(
        default=256, ge=16, le=4096, description="Token budget of the facts block in the prompt"
    )
    database_path: Path | None = Field(default=None, description="Empty = $FARENSE_HOME/farense.db")

    @field_validator("farense_home", "models_dir", "database_path", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def models_root(self) -> Path:
        return self.models_dir or self.farense_home / "models"

    @property
    def database_file(self) -> Path:
        """The store the knowledge base lives in: the same DATABASE_PATH the data package reads."""
        return self.database_path or self.farense_home / "farense.db"

    @classmethod
    def load(cls, **overrides) -> "InferenceSettings":
        try:
            return cls(**overrides)
        except ValidationError as error:
            raise explain(error, cls) from None
