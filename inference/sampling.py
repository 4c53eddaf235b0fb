"""Nucleus (top-p) sampling without sorting the whole vocabulary every step.

mlx-lm's top-p sorts all 49,152 log-probabilities of every row at every step; on CPU that sort is
~10 ms a row, a fifth of a decode step of the 135M model and more than half of a batched one. The
nucleus is far smaller (SmolLM2 on the bot's questions and long-form prompts, 620 steps: median 23
tokens, p99 ~1,200, max 1,790), so only the TOP_K most likely tokens are found (argpartition,
linear time), sorted, and searched for the top-p threshold. Whether those TOP_K hold top_p of the
probability is checked at every step; when they do not, that step takes mlx-lm's full sort. Either
way each token is drawn from exactly the distribution of mlx-lm's make_sampler(temperature, top_p),
up to float rounding in the cumulative sums.
"""

from __future__ import annotations

import functools

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_p, categorical_sampling
from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

TOP_K = 2048


@functools.lru_cache(maxsize=64)
def make_sampler(temperature: float, top_p: float):
    """mlx-lm's sampler for (temperature, top_p), faster for 0 < top_p < 1. The same settings get
    the same sampler, so a batch whose requests share them is sampled in one call, not row by row."""
    if temperature == 0 or not 0 < top_p < 1:
        return mlx_make_sampler(temperature, top_p)

    def sample(logprobs: mx.array) -> mx.array:
        found = nucleus(logprobs, top_p)
        if found is None:
            return categorical_sampling(apply_top_p(logprobs, top_p), temperature)
        tokens, kept = found
        choice = mx.random.categorical(kept * (1.0 / temperature))
        return mx.take_along_axis(tokens, choice[..., None], axis=-1)[..., 0]

    return sample


def nucleus(logprobs, top_p: float, top_k: int = TOP_K):
    """(token ids, their log-probabilities with those outside the nucleus at -inf), both (rows, top_k),
    or None when the top_k most likely tokens of some row hold less than top_p of its probability.

    The threshold is mlx-lm's apply_top_p's: sorted ascending, a token is dropped when the mass of
    the tokens above it reaches top_p of the total; every token outside the top_k has at least the
    top_k's mass above it, so when that reaches top_p they are all dropped and the top_k decide.
    """
    k = min(top_k, logprobs.shape[-1])
    tokens = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[..., :k]
    values = mx.take_along_axis(logprobs, tokens, axis=-1)
    ascending = mx.sort(values, axis=-1)
    probs = mx.exp(ascending.astype(mx.float32))
    needed = top_p * mx.exp(logprobs.astype(mx.float32)).sum(axis=-1, keepdims=True)
    above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    if not mx.all(above[..., :1] + probs[..., :1] >= needed).item():  # waits for this step's logits
        return None
    dropped = (above >= needed).sum(axis=-1, keepdims=True)
    threshold = mx.take_along_axis(ascending, dropped, axis=-1)
    return tokens, mx.where(values < threshold, -float("inf"), values)
