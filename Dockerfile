# syntax=docker/dockerfile:1
# The snapgroup operator image.
#
#   docker build -t snapgroup:0.1.0 .
#
# Two stages: the builder turns the project and its dependencies into wheels; the final image
# installs those wheels into a virtual environment and carries no compiler, build tool or source
# tree. The final image runs as uid 65532 and writes nothing at run time, so the Deployment can
# mount its root filesystem read-only (deploy/base/deployment.yaml gives it an emptyDir at /tmp).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Every dependency leaves here as a wheel, so the final stage installs without a network or a compiler.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="snapgroup" \
      org.opencontainers.image.description="Kubernetes operator for application-consistent snapshots of several stateful services at once" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

ENV VIRTUAL_ENV=/opt/snapgroup \
    PATH=/opt/snapgroup/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

# The venv gets no pip of its own: the base image's pip installs into it, compiling the
# bytecode now, while the filesystem is still writable. The wheels are mounted, not copied,
# so they add nothing to the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip "$VIRTUAL_ENV" \
    && pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir --no-index \
        --disable-pip-version-check --find-links=/wheels "snapgroup==${VERSION}" \
    && groupadd --gid 65532 snapgroup \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin snapgroup

USER 65532:65532
WORKDIR /tmp
# 8080: kopf's liveness endpoint (/healthz); 9090: Prometheus /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["snapgroup"]
CMD ["run"]
