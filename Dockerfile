# The bot on a Linux server, from the wheel (what `pip install .` gives), as a non-root user.
#   docker compose up -d        (compose.yaml: .env for settings, FARENSE_HOME on the volume)
# BASE: any Debian/Ubuntu with Python >= 3.10 and glibc >= 2.35 (MLX's Linux wheels need it).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS wheel
COPY . /src
RUN python3 -m venv /build && /build/bin/pip install --no-cache-dir --quiet --upgrade pip \
    && /build/bin/pip wheel --no-cache-dir --no-deps --quiet -w /wheels /src

FROM ${BASE}
# OpenBLAS: MLX's CPU wheel links a reference BLAS; preloaded OpenBLAS runs matmul ~30x faster
# (the library inference/backend.py looks for, the one scripts/install-blas.sh installs); tzdata for
# RETRAIN_TIMEZONE.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopenblas0-pthread ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels /wheels
RUN python3 -m venv /opt/farense && /opt/farense/bin/pip install --no-cache-dir --quiet /wheels/*.whl \
    && rm -rf /wheels
RUN useradd --create-home --uid 10001 farense && mkdir /data && chown farense:farense /data
ENV PATH=/opt/farense/bin:$PATH \
    FARENSE_HOME=/data \
    PYTHONUNBUFFERED=1
USER farense
WORKDIR /home/farense
VOLUME /data
# doctor exits 1 when a check fails (settings, Telegram, model, disk, state); the first start
# fetches and converts the model (about a minute), hence the start period.
HEALTHCHECK --interval=5m --timeout=1m --start-period=5m --retries=2 CMD ["farense-bot", "doctor"]
# SIGTERM lets a running training step finish and checkpoint: give it `stop_grace_period` (compose).
STOPSIGNAL SIGTERM
CMD ["farense-bot"]
