"""In-process MLX inference: model store, backend choice, the Engine, and `python -m inference`.

The optimized BLAS must be loaded before anything imports mlx, so it happens here, first.
"""

import atexit
import sys

from .backend import preload_blas

preload_blas()


@atexit.register
def _clear_mlx_streams() -> None:
    """MLX needs `clear_streams()` at the end of each thread that ran ops, the main one included;
    otherwise the process aborts at exit ("terminate called without an active exception")."""
    if "mlx.core" in sys.modules:
        sys.modules["mlx.core"].clear_streams()
