#!/bin/sh
# Optional speed-up for Linux CPUs: MLX's CPU wheel links a reference BLAS (~7 GFLOP/s); with
# OpenBLAS preloaded, matmul runs ~30x faster. Installed when we may use apt; never fatal.
[ "$(uname -s)" = Linux ] || exit 0
ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends libopenblas0-pthread) >/dev/null 2>&1 \
    && echo "installed OpenBLAS (libopenblas0-pthread)" && exit 0
fi
echo "note: no OpenBLAS; MLX will use its slower reference BLAS (Debian/Ubuntu: apt-get install libopenblas0-pthread)"
exit 0
