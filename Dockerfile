# syntax=docker/dockerfile:1
# whitebit-exporter image: a builder stage makes a virtualenv from hashed, exact-version locks; the final
# stage gets only that virtualenv, runs as a fixed non-root UID and starts the demo unless told otherwise.
#   docker build -t whitebit-exporter .
#   docker run --rm -p 9945:9945 whitebit-exporter                      # the demo
#   docker run --rm -p 9945:9945 -p 9946:9946 -v "$PWD/config.yaml:/etc/whitebit-exporter/config.yaml:ro" \
#       -v whitebit-state:/var/lib/whitebit-exporter whitebit-exporter \
#       --config.file /etc/whitebit-exporter/config.yaml --web.listen-address :9945 --webhooks.listen-address :9946

# The base is pinned by tag and by digest (the digest wins; the tag says what it is). Bump both together.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm@sha256:2199a62885a12290dc9c5be3ca0681d367576ab7bf037da120e564723292a2f0

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first (a layer that survives source edits), each pinned with its hash.
COPY docker/requirements.lock docker/requirements-build.lock /src/docker/
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r docker/requirements-build.lock \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r docker/requirements.lock
COPY pyproject.toml README.md /src/
COPY exporter/ /src/exporter/
# The project's own wheel is built with the pinned backend (no isolated build fetching unpinned tools)
# and installed without touching an index, so nothing unpinned enters the image.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-deps --no-index /tmp/wheels/*.whl \
    && /opt/venv/bin/whitebit-exporter --version

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="whitebit-exporter" \
      org.opencontainers.image.description="Prometheus exporter for WhiteBIT accounts (balances, open orders, signed webhooks, history reconciliation) and Zero Hash balance webhooks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.8-slim-bookworm"
# A fixed UID/GID, so volume ownership and Kubernetes securityContext can name it.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --home-dir /var/lib/whitebit-exporter \
       --no-create-home --shell /usr/sbin/nologin exporter \
    && mkdir -p /var/lib/whitebit-exporter /etc/whitebit-exporter \
    && chown exporter:exporter /var/lib/whitebit-exporter
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The state file (state.path) is relative to the working directory: keep it on a volume.
WORKDIR /var/lib/whitebit-exporter
VOLUME ["/var/lib/whitebit-exporter"]
USER 10001:10001
# 9945: /metrics, /-/healthy, /-/ready; 9946: the webhook receivers.
EXPOSE 9945 9946
# Python's standard library does the probe: no curl or wget in the image. Set HEALTHCHECK_URL when
# --web.listen-address moves the metrics listener off port 9945; with TLS (--web.config.file), set it to
# https://<a name the certificate holds>:9945/-/healthy and HEALTHCHECK_CA_FILE to the CA that signed it
# (/-/healthy needs no password; see the README's "TLS and basic auth").
ENV HEALTHCHECK_URL=http://127.0.0.1:9945/-/healthy \
    HEALTHCHECK_CA_FILE=""
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request; ca = os.environ.get('HEALTHCHECK_CA_FILE'); context = ssl.create_default_context(cafile=ca) if ca else None; sys.exit(0 if urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4, context=context).status == 200 else 1)"]
ENTRYPOINT ["whitebit-exporter"]
# The demo needs no credentials; a real deployment replaces CMD (see the header).
CMD ["--demo", "--web.listen-address", ":9945"]
