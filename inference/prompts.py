"""Chat prompts: the configured system prompt plus the conversation, through the model's template."""

from __future__ import annotations


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    if not system_prompt or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def render_prompt(tokenizer, messages: list[dict], system_prompt: str) -> list[int]:
    """Token ids of the prompt; templates without a system role get it folded into the first turn."""
    full = with_system(messages, system_prompt)
    try:
        return list(tokenizer.apply_chat_template(full, add_generation_prompt=True, tokenize=True))
    except Exception:  # e.g. Mistral's template raises on a system role
        if full and full[0]["role"] == "system" and len(full) > 1:
            merged = [{"role": full[1]["role"], "content": f"{full[0]['content']}\n\n{full[1]['content']}"},
                      *full[2:]]
            return list(tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=True))
        raise
