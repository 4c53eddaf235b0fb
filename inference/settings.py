"""Settings of the inference package, read from the environment and `.env` (common/settings.py).

Every package has its own settings class on the one base; none reads `os.environ` directly. Paths
under FARENSE_HOME (models, database, production pointer) come from `settings.home`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from common.settings import HomeSettings

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant for fans of SC Farense, the football club of Faro, Portugal. "
    "Reply in the same language as the user. Keep answers short and factual; if you do not "
    "know, say so."
)
# The share of a question's telling words (weighted by rarity) a fact must hold, tuned with
# bench/retrieval.py on the dev questions: 0.5 rejects 11 of 15 out-of-domain ones there, while an
# absolute bm25 floor declined one-rare-word questions ("What are Farense's colours?").
RETRIEVAL_MIN_SCORE = 0.5


class InferenceSettings(HomeSettings):
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
    answer_from: Literal["fact", "model"] = Field(
        default="fact",
        description="A grounded answer sends the fact the model's answer drew on (fact), or the model's own"
        " words checked by the faithfulness guard (model; for a large MODEL_PATH)",
    )
    retrieval_top_k: int = Field(default=3, ge=1, le=10, description="Facts put in the prompt at most")
    retrieval_min_score: float = Field(
        default=RETRIEVAL_MIN_SCORE,
        ge=0.0,
        le=1.0,
        description="Share (0-1, rare words weigh more) of the question's words a fact must hold to"
        " be used; when no fact does, the bot declines",
    )
    grounding_context_tokens: int = Field(
        default=256, ge=16, le=4096, description="Token budget of the facts block in the prompt"
    )
