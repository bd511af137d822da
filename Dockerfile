# syntax=docker/dockerfile:1
# touchpoints worker image: `docker build -t touchpoints .`
#   docker run --rm -p 6066:6066 -e KAFKA_BOOTSTRAP_SERVERS=... -e CLICKHOUSE_URL=... touchpoints
# The same image runs every subcommand: `touchpoints worker` (default), `topics`, `migrate`, ...
# Pinned by version tag; pin by digest too in your registry mirror (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: install the package and its dependencies into a virtualenv -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# README.md* : pyproject declares it as the long description; optional for the build.
COPY pyproject.toml README.md* ./
COPY streams/ streams/
# faust-streaming[rocksdict]: the RocksDB driver behind TABLE_STORE=rocksdb:// (Faust uses
# rocksdict when it is installed); resolved together with the pins in pyproject.toml.
RUN pip install --upgrade pip \
 && pip install . "faust-streaming[rocksdict]" \
 && touchpoints --help > /dev/null \
 && python -c "import rocksdict, streams.runtime.app"

# --- runtime: the virtualenv, the schemas, a non-root user ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="touchpoints" \
      org.opencontainers.image.description="Streaming customer-touchpoint pipeline: Kafka -> Faust -> ClickHouse" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 touchpoints \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/touchpoints \
      --no-create-home --shell /usr/sbin/nologin touchpoints \
 && mkdir -p /var/lib/touchpoints \
 && chown 10001:10001 /var/lib/touchpoints
COPY --from=build /opt/venv /opt/venv
COPY schemas/ /app/schemas/
COPY deploy/rules.yaml /app/rules.yaml
# Settings (streams/settings.py) read from the environment; these are the image's defaults.
# DATA_DIR sits on the volume Kubernetes mounts at /var/lib/touchpoints; /tmp is an emptyDir
# there (the root filesystem is read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/touchpoints \
    SCHEMAS_DIR=/app/schemas \
    RULES_FILE=/app/rules.yaml \
    DATA_DIR=/var/lib/touchpoints/faust \
    CLICKHOUSE_CHDB_PATH=/var/lib/touchpoints/chdb \
    WEB_PORT=6066
WORKDIR /var/lib/touchpoints
USER 10001:10001
EXPOSE 6066
# Docker only (Kubernetes uses the probes in deploy/k8s). The slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WEB_PORT', '6066'), timeout=3)"]
ENTRYPOINT ["touchpoints"]
CMD ["worker"]
