# syntax=docker/dockerfile:1
#
# The worker's runtime image: the locked runtime dependencies only (no dev group), a non-root
# user, and `image-worker` as PID 1 so SIGTERM reaches it.
#
#   docker build -t image-worker .
#   docker run --rm --env-file .env -p 8080:8080 image-worker          # = image-worker run
#   docker run --rm --env-file .env image-worker status                 # any other command
#
# Without a Docker engine: scripts/build_image.sh builds this file with podman (as CI does), and
# tests/system/test_container_image.py runs the built image against the devstack.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# --- build: resolve nothing, install exactly uv.lock into /app/.venv
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when the lockfile changes. --frozen
# installs uv.lock as it is without reading the workspace members, so the devstack (dev only)
# stays out of the build context entirely; CI checks the lock is current (`uv sync --locked`).
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself, installed as a wheel (--no-editable) so the source tree stays behind.
# The wheel holds every file under worker/: .dockerignore keeps secrets and tests out of it.
# --refresh-package: uv's cache (the cache mount outlives builds) keys a local project's wheel
# by pyproject.toml only, so without it a changed worker/ would ship the previous build's code.
COPY README.md ./
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --refresh-package image-worker

# --- runtime: the same base image (the venv links to its interpreter), no uv, no build tools
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent worker
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEALTH_PORT=8080
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness through /healthz with the standard library (no curl in a slim image).
# HEALTH_PORT=0 turns the endpoints off, and with them this check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('HEALTH_PORT', '8080'); sys.exit(0 if port == '0' else urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status != 200)"]
# Exec form: image-worker is PID 1 and receives SIGTERM itself (no shell in between). It
# finishes in-flight jobs for WORKER_SHUTDOWN_GRACE_SECONDS, releases the rest, then exits; give
# it longer than that (docker stop -t, stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["image-worker"]
CMD ["run"]
