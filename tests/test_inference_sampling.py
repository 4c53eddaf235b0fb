"""Fast nucleus sampling: the same tokens kept as mlx-lm's top-p, and draws from its distribution."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.sample_utils import apply_top_p

import inference  # noqa: F401  (the optimized BLAS before mlx)
from inference.sampling import make_sampler, nucleus

VOCAB = 49_152  # SmolLM2's


def normalized(logits):
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


@pytest.mark.parametrize("scale", [4.0, 6.0, 10.0])
def test_nucleus_keeps_the_tokens_mlx_lm_keeps(scale):
    mx.random.seed(int(scale))
    logprobs = normalized(mx.random.normal((4, VOCAB)) * scale)
    tokens, kept = nucleus(logprobs, 0.9)
    reference = ~mx.isinf(apply_top_p(logprobs, 0.9))
    for row in range(4):
        ours = {t for t, value in zip(tokens[row].tolist(), kept[row].tolist()) if value != float("-inf")}
        theirs = {token for token, keep in enumerate(reference[row].tolist()) if keep}
        assert ours == theirs and len(ours) >= 1


def test_a_flat_distribution_is_left_to_the_full_sort():
    mx.random.seed(0)
    flat = normalized(mx.random.normal((2, VOCAB)) * 0.1)  # the nucleus holds ~90% of the vocabulary
    assert nucleus(flat, 0.9) is None
    draws = make_sampler(0.7, 0.9)(flat)
    assert draws.shape == (2,) and all(0 <= t < VOCAB for t in draws.tolist())


def test_draws_follow_the_tempered_nucleus():
    mx.random.seed(1)
    logits = mx.full((8192,), -30.0)
    favourites = mx.array([7, 300, 4096, 8000, 12])
    logits[favourites] = mx.array([2.0, 1.5, 1.0, 0.5, -3.0])  # token 12 falls outside top_p 0.9
    rows = normalized(mx.broadcast_to(logits, (4000, 8192)))  # 4000 draws in one batched call
    draws = make_sampler(0.5, 0.9)(rows).tolist()
    kept = mx.softmax(mx.array([2.0, 1.5, 1.0, 0.5]) / 0.5).tolist()
    assert set(draws) <= {7, 300, 4096, 8000}
    for token, probability in zip((7, 300, 4096, 8000), kept):
        assert abs(draws.count(token) / len(draws) - probability) < 0.03


def test_requests_with_the_same_settings_share_one_sampler():
    assert make_sampler(0.3, 0.9) is make_sampler(0.3, 0.9)  # so a batch is sampled in one call
    assert make_sampler(0.3, 0.9) is not make_sampler(0.7, 0.9)
