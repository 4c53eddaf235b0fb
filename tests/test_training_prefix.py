"""The prompt prefix every row shares runs once per batch: same loss and gradients, less compute."""

from __future__ import annotations

import numpy as np
import pytest

SYSTEM = "You answer questions about SC Farense, the football club of Faro."


def _lora_model(tiny_model_dir):
    import mlx.core as mx
    from mlx_lm.utils import load

    from training.trainer.lora import apply_lora

    model, tokenizer = load(str(tiny_model_dir))
    mx.random.seed(0)
    apply_lora(model, 16, 8, 20.0, 0.0)
    for block in model.layers:  # lora_b starts at zero: make the LoRA path carry gradient to lora_a too
        for _, module in block.named_modules():
            if hasattr(module, "lora_b"):
                module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    return model, tokenizer


def test_shared_columns_stop_at_the_first_difference_and_before_the_first_target():
    from training.trainer.batching import shared_columns

    inputs = np.array([[1] * 20 + [2, 3, 4], [1] * 20 + [5, 6, 7]])
    targets = np.zeros_like(inputs, bool)
    targets[:, 22:] = True
    assert shared_columns(inputs, targets) == 20
    targets[1, 12:] = True  # a row whose answer starts earlier: its outputs from column 12 are needed
    assert shared_columns(inputs, targets) == 12
    assert shared_columns(inputs[:1], targets[:1]) == 0  # one row: nothing to share
    inputs[1, 5] = 9  # a prefix shorter than one pad multiple is not worth a second pass
    assert shared_columns(inputs, targets) == 0


def test_collated_batches_share_the_system_prompt_but_no_target(dataset, tiny_model_dir):
    from mlx_lm.utils import load_tokenizer

    from training.trainer.batching import collate, load_examples

    examples = load_examples(dataset / "train.jsonl", load_tokenizer(tiny_model_dir), SYSTEM, 256)
    batch = collate(examples[:4], 0)
    inputs = np.array(batch.inputs)
    assert batch.shared > len(SYSTEM.split())  # the template header and the whole system prompt
    assert (inputs[:, : batch.shared] == inputs[:1, : batch.shared]).all()
    assert np.array(batch.positions)[np.array(batch.weights) > 0].min() % inputs.shape[1] >= batch.shared


@pytest.mark.parametrize("checkpointed", [False, True])
def test_loss_and_gradients_with_the_shared_prefix_equal_the_plain_ones(dataset, tiny_model_dir, checkpointed):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from training.trainer.batching import collate, load_examples
    from training.trainer.loop import make_loss
    from training.trainer.lora import use_grad_checkpoint

    model, tokenizer = _lora_model(tiny_model_dir)
    if checkpointed:  # the shared pass is not used then (see prefix.can_share): same numbers anyway
        use_grad_checkpoint(model)
    batch = collate(load_examples(dataset / "train.jsonl", tokenizer, SYSTEM, 256)[:6], 0)
    loss_and_grad = nn.value_and_grad(model, make_loss(model))
    results = {}
    for shared in (0, batch.shared):
        (value, count), grads = loss_and_grad(
            model, batch.inputs, batch.positions, batch.labels, batch.weights, None, shared
        )
        mx.eval(value, count, grads)
        results[shared] = (value.item(), count.item(), {k: np.array(v) for k, v in tree_flatten(grads)})
    (plain, plain_count, plain_grads), (shared, shared_count, shared_grads) = results[0], results[batch.shared]
    assert batch.shared > 0 and shared_count == plain_count
    assert shared == pytest.approx(plain, rel=1e-5)
    assert set(shared_grads) == set(plain_grads)
    for name, grad in plain_grads.items():
        assert np.abs(grad).max() > 0, name  # every LoRA matrix gets a gradient, through the prefix too
        np.testing.assert_allclose(shared_grads[name], grad, rtol=1e-3, atol=1e-5 * np.abs(grad).max())


def test_the_probe_refuses_sharing_under_gradient_checkpointing(tiny_model_dir):
    from training.trainer.lora import use_grad_checkpoint
    from training.trainer.prefix import can_share

    model, _ = _lora_model(tiny_model_dir)
    assert can_share(model, model.model)
    use_grad_checkpoint(model)
    assert not can_share(model, model.model)


def test_batches_are_drawn_from_examples_that_start_alike_so_they_share_a_prefix():
    from training.trainer.batching import PREFIX_KEY_TOKENS, TokenizedExample, batch_groups, collate

    def example(start: int, length: int) -> TokenizedExample:
        tokens = np.array([start] * PREFIX_KEY_TOKENS + list(range(100, 100 + length)), np.int32)
        mask = np.zeros(len(tokens), bool)
        mask[-3:] = True
        return TokenizedExample(tokens, mask)

    # two "languages" of prompts, interleaved and of mixed lengths, and two rare prompts
    examples = [example(1 + i % 2, (7 * i) % 23 + 4) for i in range(20)] + [example(5, 9), example(6, 30)]
    batches = batch_groups(examples, 4)

    assert sorted(i for batch in batches for i in batch) == list(range(len(examples)))
    starts = [{int(examples[i].tokens[0]) for i in batch} for batch in batches]
    assert sorted(map(sorted, starts)) == [[1]] * 3 + [[2]] * 3 + [[5, 6]]  # the rare two: together
    for batch, start in zip(batches, starts):
        lengths = [len(examples[i]) for i in batch]
        assert lengths == sorted(lengths) and len(batch) <= 4
        if len(start) == 1:  # one language per batch: its whole prompt prefix runs once
            assert collate([examples[i] for i in batch], 0).shared >= PREFIX_KEY_TOKENS
