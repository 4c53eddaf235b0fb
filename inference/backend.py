"""Compute backend choice: optimized BLAS on CPU, device, and the weight dtype to serve with.

The Linux `mlx-cpu` wheel links a reference BLAS (7.6 GFLOP/s fp32 matmul measured here). Loading an
optimized BLAS with RTLD_GLOBAL *before* mlx is imported makes MLX's cblas calls resolve to it
(236 GFLOP/s). That is why `inference/__init__.py` calls `preload_blas()` first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from common.settings import Settings

log = logging.getLogger(__name__)

_OPENBLAS_CANDIDATES = (
    "/usr/lib/{arch}-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{arch}-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)


class BackendSettings(Settings):
    blas_path: str = Field(
        default="", description="Optimized BLAS to preload on CPU (Linux); empty = search, 'none' = MLX's own"
    )


@dataclass(frozen=True)
class BlasChoice:
    name: str
    path: str | None
    reason: str


_loaded: BlasChoice | None = None


def preload_blas(blas_path: str | None = None) -> BlasChoice:
    """Load an optimized BLAS into the global symbol namespace; idempotent, never raises."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if sys.platform != "linux":
        _loaded = BlasChoice("platform default", None, f"{sys.platform}: MLX uses Accelerate/Metal")
        return _loaded
    if "mlx.core" in sys.modules:
        _loaded = BlasChoice("reference", None, "mlx was imported before the BLAS preload")
        return _loaded
    if blas_path is None:
        try:
            blas_path = BackendSettings().blas_path
        except Exception as error:  # a broken .env must not stop inference: fall back, say why
            log.warning("BLAS_PATH unreadable (%s); searching the usual places", error)
            blas_path = ""
    if blas_path.lower() == "none":
        _loaded = BlasChoice("reference", None, "BLAS_PATH=none")
        return _loaded
    arch = platform.machine()
    candidates = [blas_path] if blas_path else [c.format(arch=arch) for c in _OPENBLAS_CANDIDATES]
    if not blas_path and (found := ctypes.util.find_library("openblas")):
        candidates.append(found)
    for candidate in candidates:
        if blas_path or Path(candidate).exists() or "/" not in candidate:
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            except OSError as error:
                log.warning("could not load BLAS %s: %s", candidate, error)
                continue
            _loaded = BlasChoice("OpenBLAS", candidate, "preloaded before mlx")
            return _loaded
    _loaded = BlasChoice(
        "reference",
        None,
        "no optimized BLAS found (on Debian/Ubuntu: apt-get install libopenblas0-pthread)",
    )
    return _loaded


def blas_in_use() -> BlasChoice:
    return _loaded or preload_blas()


def choose_device(requested: str) -> str:
    """'gpu' when MLX has Metal or CUDA and it was not refused, else 'cpu'."""
    import mlx.core as mx

    if requested == "cpu":
        return "cpu"
    has_gpu = mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available())
    if requested == "gpu" and not has_gpu:
        log.warning("DEVICE=gpu but MLX has no Metal/CUDA device here; using the CPU")
    return "gpu" if has_gpu else "cpu"


def use_device(device: str) -> None:
    """Switch MLX's default device only when needed: switching it needlessly while another thread
    runs ops makes MLX abort at interpreter exit (seen with mlx 0.32)."""
    import mlx.core as mx

    target = mx.gpu if device == "gpu" else mx.cpu
    if mx.default_device() != target:
        mx.set_default_device(target)
