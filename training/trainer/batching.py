"""Chat JSONL → masked token sequences → length-grouped batches.

Training text is rendered with the model's chat template *and the serving system prompt*, so the
model learns exactly the prompt shape it will see in the bot. Loss is taken on assistant tokens only.
Sorting by length before cutting batches keeps padding small; the batch order is shuffled per epoch
by the loop. Validation batches are built once and frozen, so every evaluation (and the adapter
gate) measures the same thing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from inference.prompts import inert_messages, with_system

from ..errors import UsageError

log = logging.getLogger(__name__)

PAD_MULTIPLE = 8  # batch widths are rounded up to this: few distinct shapes for mx.compile
PREFIX_KEY_TOKENS = 16  # examples that start with the same tokens are batched together (batch_groups)


class DatasetError(UsageError, ValueError):
    """The dataset folder or a split is missing or has no usable example."""


@dataclass(frozen=True)
class TokenizedExample:
    tokens: np.ndarray  # int32 [n]
    mask: np.ndarray  # bool [n]: True where the token is written by the assistant (is a target)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Batch:
    inputs: object  # mx.array int32 [B, W]
    positions: object  # mx.array int32 [K]: flat indices into B × W of the assistant targets
    labels: object  # mx.array int32 [K]: the token to predict at each position
    weights: object  # mx.array float32 [K]: 1, or 0 for the padding that rounds K up
    tokens: int  # real (non-padding) input positions
    cells: int  # B × W
    shared: int = 0  # leading input columns equal in every row and before every target: run once (prefix.py)


def load_examples(path: Path, tokenizer, system_prompt: str, max_seq_length: int) -> list[TokenizedExample]:
    """Tokenize one split; malformed lines are reported as file:line and skipped."""
    if not path.is_file():
        raise DatasetError(f"dataset split not found: {path}")
    examples, truncated = [], 0
    with open(path, "rb") as handle:  # bytes: a line of invalid UTF-8 is one bad line, not a crash
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                messages = _messages(json.loads(raw.decode("utf-8")))
                example = encode(tokenizer, messages, system_prompt)
            except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
                log.warning("%s:%d: skipped: %s", path.name, number, error)
                continue
            if len(example) > max_seq_length:
                truncated += 1
                if not truncate([example], max_seq_length):
                    log.warning(
                        "%s:%d: skipped: the prompt alone exceeds max_seq_length=%d", path.name, number, max_seq_length
                    )
                    continue
            examples.append(example)
    if truncated:
        log.warning("%s: %d example(s) cut to max_seq_length=%d tokens", path.name, truncated, max_seq_length)
    examples = truncate(examples, max_seq_length)
    if not examples:
        raise DatasetError(f"{path}: no usable example")
    return examples


def truncate(examples: list[TokenizedExample], max_seq_length: int) -> list[TokenizedExample]:
    """Cut to max_seq_length tokens; drop examples left without an assistant target."""
    cut = [TokenizedExample(e.tokens[:max_seq_length], e.mask[:max_seq_length]) for e in examples]
    return [e for e in cut if e.mask[1:].any()]


def _messages(record) -> list[dict]:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    messages = record["messages"]
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ValueError("every message needs a role of system, user or assistant")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise ValueError(f"empty or non-text content in a {message['role']} message")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message")
    return messages


def encode(tokenizer, messages: list[dict], system_prompt: str) -> TokenizedExample:
    """Tokens of the whole chat, with a mask over every assistant turn (prompt tokens are masked out).

    The system prompt goes in exactly as `inference.prompts.render_prompt` puts it at serving time.
    """
    messages = served_messages(tokenizer, messages, system_prompt)
    tokens = _ids(tokenizer.apply_chat_template(messages, return_dict=False))
    mask = np.zeros(len(tokens), bool)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(
            _ids(tokenizer.apply_chat_template(messages[:index], add_generation_prompt=True, return_dict=False))
        )
        end = len(_ids(tokenizer.apply_chat_template(messages[: index + 1], return_dict=False)))
        mask[start:end] = True
    if not mask.any():
        raise ValueError("the chat template left no assistant tokens")
    return TokenizedExample(np.asarray(tokens, np.int32), mask)


def served_messages(tokenizer, messages: list[dict], system_prompt: str) -> list[dict]:
    """The system prompt added like the engine adds it, folded into the first turn when the
    chat template has no system role (the same fallback as `render_prompt`); content made inert
    like `render_prompt` does, so no example teaches a role a user wrote."""
    full = with_system(inert_messages(tokenizer, messages), system_prompt)
    try:
        tokenizer.apply_chat_template(full, tokenize=False)
        return full
    except Exception:
        if full[0]["role"] != "system" or len(full) < 2:
            raise
        return [{"role": full[1]["role"], "content": f"{full[0]['content']}\n\n{full[1]['content']}"}, *full[2:]]


def _ids(value) -> list[int]:
    return list(value["input_ids"] if isinstance(value, dict) else value)


def length_batches(lengths: list[int], batch_size: int, groups: list | None = None) -> list[list[int]]:
    """Indices sorted by length (stable) and cut into consecutive batches; the last may be short.
    With `groups` (a sortable key per index), each group is sorted and cut on its own."""
    keys = groups or [0] * len(lengths)
    batches = []
    for key in sorted(set(keys)):
        order = sorted((i for i in range(len(lengths)) if keys[i] == key), key=lambda i: (lengths[i], i))
        batches += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches


def batch_groups(examples: list[TokenizedExample], batch_size: int) -> list[list[int]]:
    """Length-sorted batches, each drawn from examples that start alike (same first PREFIX_KEY_TOKENS
    tokens) wherever at least a batch of them does, so the prompt prefix they share runs once per
    batch (prefix.py). Grounded prompts start with one language's instructions: without this, most
    batches would mix languages and share nothing. The seed's prompts all start alike: one group."""
    keys = [e.tokens[:PREFIX_KEY_TOKENS].tobytes() for e in examples]
    counts = Counter(keys)
    return length_batches(
        [len(e) for e in examples], batch_size, [key if counts[key] >= batch_size else b"" for key in keys]
    )


def collate(examples: list[TokenizedExample], pad_id: int) -> Batch:
    """Pad to the longest example and shift into inputs and (position, label) targets.

    Width and target count are rounded up to PAD_MULTIPLE so a compiled step sees few shapes.
    """

    width = _round_up(max(len(e) for e in examples) - 1)
    tokens = np.full((len(examples), width + 1), pad_id, np.int32)
    mask = np.zeros((len(examples), width + 1), bool)
    for row, example in enumerate(examples):
        tokens[row, : len(example)] = example.tokens
        mask[row, : len(example)] = example.mask
    positions = np.flatnonzero(mask[:, 1:]).astype(np.int32)
    labels = tokens[:, 1:].reshape(-1)[positions]
    count = _round_up(len(positions))
    weights = np.zeros(count, np.float32)
    weights[: len(positions)] = 1.0
    positions = np.pad(positions, (0, count - len(positions)))
    labels = np.pad(labels, (0, count - len(labels)))
    real = sum(len(e) - 1 for e in examples)
    return Batch(
        mx.array(tokens[:, :-1]),
        mx.array(positions),
        mx.array(labels),
        mx.array(weights),
        real,
        len(examples) * width,
        shared_columns(tokens[:, :-1], mask[:, 1:]),
    )


def shared_columns(inputs: np.ndarray, targets: np.ndarray) -> int:
    """How many leading input columns every row has in common, up to the first column whose output
    is a target (those outputs are needed per row); 0 when it is not worth a second pass."""
    if len(inputs) < 2:
        return 0
    differs = np.flatnonzero((inputs != inputs[:1]).any(axis=0))
    common = int(differs[0]) if len(differs) else inputs.shape[1]
    shared = min(common, int(targets.argmax(axis=1).min()))
    return shared if shared >= PAD_MULTIPLE else 0


def _round_up(n: int) -> int:
    return max(PAD_MULTIPLE, -(-n // PAD_MULTIPLE) * PAD_MULTIPLE)


def padding_fraction(batches: list[Batch]) -> float:
    cells = sum(b.cells for b in batches)
    return 1.0 - sum(b.tokens for b in batches) / cells if cells else 0.0


def pad_id(tokenizer) -> int:
    value = getattr(tokenizer, "pad_token_id", None)
    return int(value if value is not None else tokenizer.eos_token_id)


def frozen_valid_batches(
    tokenizer, valid_path: Path, system_prompt: str, batch_size: int, max_seq_length: int, max_batches: int
) -> list[Batch]:
    """The validation batches, deterministic: same file and arguments → same batches, every time.

    When there are more than `max_batches`, evenly spaced ones across the length order are kept,
    so short and long answers stay represented.
    """
    examples = load_examples(Path(valid_path), tokenizer, system_prompt, max_seq_length)
    groups = batch_groups(examples, batch_size)
    if len(groups) > max_batches:
        picks = np.linspace(0, len(groups) - 1, max_batches).round().astype(int)
        groups = [groups[i] for i in picks]
    pad = pad_id(tokenizer)
    return [collate([examples[i] for i in group], pad) for group in groups]
