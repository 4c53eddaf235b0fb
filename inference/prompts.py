"""Chat prompts: the configured system prompt plus the conversation, through the model's template.

Every message's content is made inert first: the chat template's control strings (role markers,
begin/end of text) and the tokenizer's special tokens are taken out, so text a user wrote (a
question, a context turn, a fact an admin took from it, a training example) can never open a role
of its own. Training renders its prompts through the same function (training/trainer/batching.py).
"""

from __future__ import annotations

# The role and boundary markers of the chat formats the bot may serve (ChatML as in SmolLM2 and
# Qwen, Gemma, Llama 3, Mistral); the tokenizer's own special tokens are added to these.
CONTROL_STRINGS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "[INST]",
    "[/INST]",
    "<s>",
    "</s>",
)


def control_strings(tokenizer) -> tuple[str, ...]:
    """CONTROL_STRINGS and every special or added control token the tokenizer knows, longest first."""
    found = set(CONTROL_STRINGS) | {
        token
        for token in getattr(tokenizer, "all_special_tokens", None) or []
        if isinstance(token, str) and token.strip()
    }
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {str(token) for token in added.values() if getattr(token, "special", False) and str(token).strip()}
    return tuple(sorted(found, key=lambda token: (-len(token), token)))


def inert(text: str, strings: tuple[str, ...]) -> str:
    """`text` without any of `strings`, removed until none is left (taking one out cannot join another)."""
    while True:
        cleaned = text
        for string in strings:
            cleaned = cleaned.replace(string, "")
        if cleaned == text:
            return text
        text = cleaned


def inert_messages(tokenizer, messages: list[dict]) -> list[dict]:
    """The messages with their content made inert for this tokenizer's template."""
    strings = control_strings(tokenizer)
    return [
        {**message, "content": inert(message["content"], strings)}
        if isinstance(message.get("content"), str)
        else message
        for message in messages
    ]


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    if not system_prompt or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def render_prompt(tokenizer, messages: list[dict], system_prompt: str) -> list[int]:
    """Token ids of the prompt, content made inert; templates without a system role get it folded
    into the first turn."""
    full = with_system(inert_messages(tokenizer, messages), system_prompt)
    try:
        return list(tokenizer.apply_chat_template(full, add_generation_prompt=True, tokenize=True))
    except Exception:  # e.g. Mistral's template raises on a system role
        if full and full[0]["role"] == "system" and len(full) > 1:
            merged = [{"role": full[1]["role"], "content": f"{full[0]['content']}\n\n{full[1]['content']}"}, *full[2:]]
            return list(tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=True))
        raise
