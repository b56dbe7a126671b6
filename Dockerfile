# adserve: HTTP on 8000, gRPC on 50051; compiled kernels kept on the volume at
# /var/cache/adserve; every setting is an ADSERVE_* variable (README, Settings).
#   docker build -t adserve .          (deploy/test-image.sh builds it with podman)
# BASE is any Debian image with Python 3.11 and its venv module: the official
# slim image by default, or one made with debootstrap where no registry is reachable.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adserve ./adserve
# a CA bundle for pip behind a TLS-inspecting proxy: --secret id=ca,src=<bundle> (optional)
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/adserve \
    && /opt/adserve/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/adserve/bin/pip uninstall --yes --quiet pip setuptools \
    && find /opt/adserve -depth -type d -name tests -path '*/site-packages/*/tests' -exec rm -rf {} +

FROM ${BASE}
# libgomp1 (GNU OpenMP): numba's thread-safe threading layer, which parallel batch kernels run on (without it
# they stay off, logged, and long batches run on serial kernels)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 adserve \
    && useradd --system --uid 10001 --gid adserve --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin adserve \
    && mkdir -p /var/cache/adserve \
    && chown adserve:adserve /var/cache/adserve
COPY --from=build /opt/adserve /opt/adserve
ENV PATH=/opt/adserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ADSERVE_HOST=0.0.0.0 \
    ADSERVE_HTTP_PORT=8000 \
    ADSERVE_GRPC_PORT=50051 \
    ADSERVE_CACHE_DIR=/var/cache/adserve \
    NUMBA_CACHE_DIR=/var/cache/adserve/numba
VOLUME ["/var/cache/adserve"]
USER 10001:10001
WORKDIR /var/cache/adserve
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADSERVE_HTTP_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["adserve"]
