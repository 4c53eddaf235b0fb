"""Run the prompt prefix that every row of a batch shares once, not once per row.

Every training example starts with the same chat-template header and serving system prompt (55 of
~115 tokens on the seed corpus). With causal attention, those positions' hidden states do not depend
on what follows, so the backbone runs them as one row, keeps each layer's keys and values, and runs
the rest of every row against them, broadcast: the same loss and gradients up to float rounding
(the gradient of the broadcast sums the rows' contributions), for roughly half the compute.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import create_attention_mask


class SharedPrefixCache:
    """One layer's keys/values of the shared prefix (1 row); the suffix pass attends to them broadcast.

    Speaks the part of mlx-lm's KV-cache protocol the attention layers use: `offset` (RoPE position of
    the next token), `update_and_fetch`, `make_mask`.
    """

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def update_and_fetch(self, keys, values):
        if self.keys is None:  # the prefix pass
            self.keys, self.values, self.offset = keys, values, keys.shape[2]
            return keys, values
        rows = keys.shape[0]

        def wide(prefix):
            return mx.broadcast_to(prefix, (rows, *prefix.shape[1:]))

        return (mx.concatenate([wide(self.keys), keys], axis=2), mx.concatenate([wide(self.values), values], axis=2))

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        return create_attention_mask(n, self.offset, return_array, window_size)


def shared_forward(backbone, inputs, shared: int):
    """Hidden states of columns `shared:` of `inputs`, the first `shared` columns (equal in every row)
    computed once."""
    caches = [SharedPrefixCache() for _ in backbone.layers]
    backbone(inputs[:1, :shared], cache=caches)
    return backbone(inputs[:, shared:], cache=caches)


def can_share(model, backbone) -> bool:
    """Whether `shared_forward` gives the plain forward's numbers on this architecture (checked on a
    probe). Not with gradient checkpointing: a checkpointed block would not pass gradients back to the
    prefix keys it reads from the cache."""
    if any(getattr(type(block), "_checkpointed", False) for block in getattr(backbone, "layers", [])):
        return False
    was_training = model.training
    model.eval()
    try:
        probe = mx.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 5, 6, 7, 8, 12, 11, 10, 9]])
        return mx.allclose(shared_forward(backbone, probe, 8), backbone(probe)[:, 8:], rtol=1e-3, atol=1e-3).item()
    except Exception:  # an architecture whose backbone or attention takes the cache otherwise
        return False
    finally:
        model.train(was_training)
