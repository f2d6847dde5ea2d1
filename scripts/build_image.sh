#!/usr/bin/env bash
# Builds the worker's container image from the Dockerfile, with or without a Docker engine.
#
#   scripts/build_image.sh [--tag NAME] [--context DIR] [--engine docker|podman]
#
# --tag defaults to image-worker:latest (podman: localhost/image-worker:latest), --context to
# this checkout; --engine (or IMAGE_ENGINE) overrides the choice below.
#
# With a running Docker engine: `docker build`, the Dockerfile as users build it.
# Without one (CI, these machines): a daemonless podman build of the same Dockerfile, set up on
# the spot, idempotently (each step is skipped when already done):
#   - podman, buildah, mmdebstrap and runc from Debian's packages (apt-get, as root);
#   - a containers.conf drop-in: runc (crun refuses this machine's hybrid cgroups), cgroupfs
#     (no systemd), and no default ulimits (podman's default open-files limit is above the
#     machine's hard limit, so runc could not start any container);
#   - stand-ins for the two base images, which only come from registries this machine cannot
#     reach: `localhost/pybase:bookworm` for python:3.11-slim-bookworm, Debian bookworm's own
#     python3 (3.11) made with mmdebstrap; and `ghcr.io/astral-sh/uv:<UV_VERSION>` holding the
#     binary of the uv wheel of the Dockerfile's UV_VERSION, at /uv as in the real image;
#   - `podman build --format docker` (the OCI format has no HEALTHCHECK: podman would drop it),
#     `--pull=never` (only the stand-ins), with the host's CA store and a uv.toml saying
#     `system-certs = true` mounted read-only into the RUN steps, so uv trusts this network's TLS
#     proxy (both are needed). Mounts, not `--env`: that would be written into the image.
# Prints the build's duration and the image's size. Exits non-zero on any failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="image-worker:latest"
context="$repo"
engine="${IMAGE_ENGINE:-}"
while [ $# -gt 0 ]; do
    case "$1" in
    --tag) tag="$2" && shift 2 ;;
    --context) context="$(cd "$2" && pwd)" && shift 2 ;;
    --engine) engine="$2" && shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
    *) printf 'unknown argument: %s (see --help)\n' "$1" >&2 && exit 2 ;;
    esac
done

PYBASE=localhost/pybase:bookworm
UV_VERSION="$(sed -n 's/^ARG UV_VERSION=//p' "$context/Dockerfile")"
[ -n "$UV_VERSION" ] || {
    echo "no 'ARG UV_VERSION=' in $context/Dockerfile" >&2
    exit 1
}
CONF_DROPIN=/etc/containers/containers.conf.d/50-image-worker.conf

step() { printf '== %s\n' "$*"; }

# A docker client without a daemon (as on these machines) is no engine.
if [ -z "$engine" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        engine=docker
    else
        engine=podman
    fi
fi

if [ "$engine" = docker ]; then
    step "docker build -t $tag $context"
    start=$SECONDS
    docker build -t "$tag" "$context"
    seconds=$((SECONDS - start))
    size="$(docker image inspect --format '{{.Size}}' "$tag")"
    base="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$context/Dockerfile")"
    base_size="$(docker image inspect --format '{{.Size}}' "$base" 2>/dev/null || echo 0)"
else
    missing=()
    for tool in podman buildah mmdebstrap runc; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            echo "missing: ${missing[*]}; install them (Debian: apt-get install podman buildah mmdebstrap runc)" >&2
            exit 1
        fi
        step "apt-get install ${missing[*]}"
        start=$SECONDS
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        echo "installed in $((SECONDS - start)) s"
    fi

    work="$(mktemp -d "${TMPDIR:-/tmp}/build-image.XXXXXX")"
    trap 'rm -rf "$work"' EXIT

    settings="$(
        cat <<'EOF'
# Written by image-worker's scripts/build_image.sh.
[containers]
# podman's default open-files limit is above this machine's hard limit: runc would refuse it.
default_ulimits = []

[engine]
# crun refuses this machine's hybrid (v1 + v2) cgroups; runc runs on them. No systemd here.
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
    )"
    if [ "$(id -u)" -ne 0 ]; then
        echo "not root: leaving podman's settings alone (see $CONF_DROPIN in this script)"
    elif [ "$(cat "$CONF_DROPIN" 2>/dev/null)" != "$settings" ]; then
        step "podman settings for this machine: $CONF_DROPIN"
        mkdir -p "$(dirname "$CONF_DROPIN")"
        printf '%s\n' "$settings" >"$CONF_DROPIN"
    fi

    if ! podman image exists "$PYBASE"; then
        step "base stand-in $PYBASE: Debian bookworm's python3 (mmdebstrap)"
        start=$SECONDS
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$work/rootfs.tar"
        # What python:3.11-slim-bookworm's configuration sets: the Dockerfile's
        # `ENV PATH=/app/.venv/bin:$PATH` must extend a real PATH.
        podman import --quiet \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' \
            "$work/rootfs.tar" "$PYBASE" >/dev/null
        rm "$work/rootfs.tar"
        echo "made in $((SECONDS - start)) s"
    fi

    uv_image="ghcr.io/astral-sh/uv:$UV_VERSION"
    if ! podman image exists "$uv_image"; then
        step "base stand-in $uv_image: the binary of the uv $UV_VERSION wheel"
        mkdir "$work/uv-image"
        if command -v uv >/dev/null 2>&1; then
            uv pip install --quiet --no-deps --target "$work/wheel" "uv==$UV_VERSION"
        else
            python3 -m pip install --quiet --no-deps --target "$work/wheel" "uv==$UV_VERSION"
        fi
        cp "$work/wheel/bin/uv" "$work/uv-image/uv"
        printf 'FROM scratch\nCOPY uv /uv\n' >"$work/uv-image/Containerfile"
        podman build --quiet --isolation=chroot --pull=never -t "$uv_image" "$work/uv-image" >/dev/null
    fi

    step "podman build -t $tag $context (--build-arg PYTHON_IMAGE=$PYBASE)"
    # uv's system-wide configuration, in the build's RUN steps only: trust the mounted CA store.
    echo 'system-certs = true' >"$work/uv.toml"
    start=$SECONDS
    podman build --format docker --isolation=chroot --network host --pull=never \
        --build-arg "PYTHON_IMAGE=$PYBASE" \
        --volume /etc/ssl/certs:/etc/ssl/certs:ro \
        --volume "$work/uv.toml:/etc/uv/uv.toml:ro" \
        -t "$tag" -f "$context/Dockerfile" "$context"
    seconds=$((SECONDS - start))
    size="$(podman image inspect --format '{{.Size}}' "$tag")"
    base="$PYBASE"
    base_size="$(podman image inspect --format '{{.Size}}' "$base")"
fi

mb() { echo "$(($1 / 1000000)) MB"; }
printf 'image %s built in %d s; size %s (%d bytes) = base %s %s + %s added (venv, user)\n' \
    "$tag" "$seconds" "$(mb "$size")" "$size" "$base" "$(mb "$base_size")" "$(mb $((size - base_size)))"
