"""What keeps one account from steering the training set: instructions to the model are never
training data, and one user's thumbs-up count only so often per build.

A question that holds a chat-template control string (`<|im_start|>`, `<start_of_turn>`, ...) or
talks to the model rather than about the club ("ignore previous instructions", "you are now",
"system:", and the same in Portuguese) is withheld, whoever vouched for it. Serving makes such
strings inert anyway (inference/prompts.py); here they are a sign the pair is an attack.
"""

from __future__ import annotations

import re

from .text import strip_accents

# Template markers of ChatML, Llama 3, Gemma and Mistral, written out by hand or by a bot.
_CONTROL = re.compile(r"<\|[a-z_]{2,40}\|>|</?(?:start_of_turn|end_of_turn|bos|eos|s)>|\[/?INST\]", re.IGNORECASE)
# Matched on the accent-stripped, lower-cased text.
_INSTRUCTIONS = re.compile(
    "|".join(
        [
            r"\b(?:ignore|disregard|forget|override)\b.{0,30}\b(?:instructions?|prompts?|rules|messages?|context)\b",
            r"\byou are (?:now|no longer)\b",
            r"\bfrom now on,? (?:you|act|answer|respond)\b",
            r"\b(?:act|behave) as (?:if|an?|the)\b",
            r"\bpretend (?:to be|you are|that you)\b",
            r"\bnew instructions?\b",
            r"\bsystem prompt\b",
            r"\bdeveloper mode\b",
            r"\bjailbreak",
            r"\bdo anything now\b",
            r"\b(?:ignora|ignore|ignorem|esquece|esqueca|esquecam|desconsidera)\b.{0,30}"
            r"\b(?:instrucoes|instrucao|regras|mensagens|ordens|prompt)\b",
            r"\b(?:agora|a partir de agora),? (?:es|tu es|vais ser|passas a ser|voce e)\b",
            r"\b(?:finge|finja|faz de conta) (?:que|ser)\b",
            r"\bnovas instrucoes\b",
            r"\b(?:prompt|mensagem) (?:de|do) sistema\b",
            r"\bmodo (?:de )?programador\b",
            r"^\s*(?:system|assistant|sistema|assistente)\s*:",
        ]
    ),
    re.MULTILINE,
)


def instructs_the_model(text: str) -> bool:
    """Whether `text` holds a control string or an instruction to the model (EN or PT)."""
    return bool(_CONTROL.search(text) or _INSTRUCTIONS.search(strip_accents(text).casefold()))
