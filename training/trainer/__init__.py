"""The trainer: batching, the loop for one or N ranks, checkpoints, memory plan, distributed launch.

MLX is imported at module top here: only `python -m training run` processes (and the evaluation
children, for the validation loss) import this package.
"""

import inference  # noqa: F401  (preloads the optimized BLAS before anything imports mlx)
