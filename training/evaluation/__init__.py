"""Measuring adapters: the promotion gate, the four-way held-out evaluation, grounding of datasets.

MLX at module top: these run as `python -m training gate|evaluate|ground` children, never in the bot.
"""

import inference  # noqa: F401  (preloads the optimized BLAS before anything imports mlx)
