"""The container image, built for real by ``scripts/build_image.sh`` and run with podman against
the devstack: what users get from ``docker build``, checked from outside the way they run it.

The image is built once per session from a copy of this checkout, into which decoys are planted
where a developer's files would be: ``.env`` files and private keys (at the root and inside
``worker/``, whose every file the wheel ships), tests inside the package, and a fresh comment in
``worker/__init__.py`` (so the build must not reuse a wheel of older sources). None may reach the
image; every other file of ``worker/`` must, unchanged.

The devstack listens on 127.0.0.1, so the worker containers use the host's network. podman's
settings for this machine (runc, cgroupfs, no default ulimits) are the build script's
containers.conf drop-in. Without podman the tests are skipped, except under ``CI=true`` where
they fail: CI must never skip them silently.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from devstack.stack import DevStack
from tests.helpers import REPO, all_terminal, free_port, insert_jobs, wait_for, worker_env

# The first test also waits for the build (setup of the session fixture counts towards it).
pytestmark = pytest.mark.timeout(600)

UID = 10001
GRACE_SECONDS = 3
# podman's own start and stop around the worker's shutdown.
STOP_SLACK_SECONDS = 4
# Armour and a base64 body: libraries that merely name the armour (cryptography, GnuTLS) don't
# match.
PRIVATE_KEY = re.compile(
    rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\r?\n(?:[A-Za-z0-9+/=]{16,}\r?\n)+-----END "
)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in (self.stdout + self.stderr).splitlines() if line.strip()]


@dataclass
class BuiltImage:
    tag: str
    context: Path  # the copy of the checkout it was built from, decoys included
    marker: str  # in every planted secret
    decoys: list[str]  # paths relative to the context


def _podman_or_skip() -> str:
    podman = shutil.which("podman")
    if podman:
        return podman
    reason = (
        "podman is not installed: scripts/build_image.sh installs it "
        "(apt-get install podman buildah mmdebstrap runc)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, where this test must run, not be skipped")
    pytest.skip(reason)


def _copy_checkout(destination: Path) -> None:
    shutil.copytree(
        REPO,
        destination,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"
        ),
        symlinks=True,
    )


def _plant_decoys(context: Path, marker: str) -> list[str]:
    """Files a developer may leave in a checkout that must never reach the image."""
    env = f"SUPABASE_SERVICE_ROLE_KEY={marker}\nCLOUDINARY_URL=cloudinary://1:{marker}@demo\n"
    key, ssh = _pem("PRIVATE KEY", marker), _pem("OPENSSH PRIVATE KEY", marker)
    decoys = {
        ".env": env,
        "worker/.env": env,
        "worker/.env.production": env,
        "worker/pipeline/service-account.pem": key,
        "worker/signing.key": marker,
        "worker/id_ed25519": ssh,
        "worker/conftest.py": f"# {marker}\n",
        "worker/test_decoy.py": f"def test_decoy():\n    assert '{marker}'\n",
        "worker/tests/test_decoy.py": f"def test_decoy():\n    assert '{marker}'\n",
    }
    for relative, text in decoys.items():
        path = context / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(decoys)


def _pem(label: str, marker: str) -> str:
    """A private key as a file holds one (the body is random, not a key): a comment line, then
    the armour around base64 lines."""
    body = base64.b64encode(os.urandom(96)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([marker, f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


@pytest.fixture(scope="session")
def podman() -> str:
    return _podman_or_skip()


@pytest.fixture(scope="session")
def image(podman: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    context = tmp_path_factory.mktemp("image") / "checkout"
    _copy_checkout(context)
    marker = f"decoy-{uuid.uuid4().hex}"
    decoys = _plant_decoys(context, marker)
    # A source change that leaves pyproject.toml alone (uv's key for a cached wheel of the
    # project): the image must carry it, not a wheel of an earlier build.
    with (context / "worker" / "__init__.py").open("a") as init:
        init.write(f"# built for the system test {uuid.uuid4().hex}\n")
    # A tag of this session's own: test sessions running side by side on one machine must not
    # replace or remove each other's image.
    tag = f"localhost/image-worker:system-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    script = str(REPO / "scripts" / "build_image.sh")
    build = subprocess.run(
        [script, "--engine", "podman", "--tag", tag, "--context", str(context)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, f"build failed:\n{build.stdout[-6000:]}\n{build.stderr[-4000:]}"
    print(f"\n{build.stdout.splitlines()[-1]} ({time.monotonic() - started:.0f} s with setup)")
    yield BuiltImage(tag, context, marker, decoys)
    subprocess.run([podman, "rmi", tag], capture_output=True)


def podman_sync(podman: str, *args: str, timeout: float = 120) -> Result:
    done = subprocess.run(
        [podman, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return Result(done.returncode, done.stdout, done.stderr)


async def podman_async(*args: str, timeout: float = 120) -> Result:
    """podman without blocking the event loop: the devstack serves the container from it."""
    process = await asyncio.create_subprocess_exec(
        shutil.which("podman") or "podman",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


# podman would otherwise try to schedule the HEALTHCHECK with systemd (absent here) and say so
# on the stderr these one-shot commands are judged by.
ONE_SHOT = ("run", "--rm", "--no-healthcheck")


@dataclass
class Container:
    name: str
    stack: DevStack
    health_port: int

    async def logs(self) -> str:
        result = await podman_async("logs", self.name)
        return result.stdout + result.stderr


@contextlib.asynccontextmanager
async def worker_container(
    image: BuiltImage, stack: DevStack, health_port: int = 0, **settings: object
) -> AsyncIterator[Container]:
    """``image-worker run`` (the image's default command) in a container on the host's network."""
    name = f"image-worker-test-{uuid.uuid4().hex[:8]}"
    env = worker_env(stack, health_port=health_port, worker_id=name, **settings)
    args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    started = await podman_async(
        "run", "--detach", "--name", name, "--network", "host", *args, image.tag
    )
    assert started.code == 0, started.stderr
    container = Container(name, stack, health_port)
    try:
        yield container
    finally:
        await podman_async("rm", "--force", "--time", "0", name)


async def _wait(container: Container, predicate, timeout: float, what: str) -> None:
    try:
        await wait_for(predicate, timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"{what} within {timeout} s; logs:\n{await container.logs()}"
        ) from None


@pytest_asyncio.fixture(scope="module")
async def running(image: BuiltImage, pg_server: str) -> AsyncIterator[Container]:
    """One worker container in realtime mode with its health port, ready (Realtime healthy)."""
    async with (
        DevStack(server_url=pg_server) as stack,
        worker_container(
            image, stack, health_port=free_port(), worker_mode="realtime"
        ) as container,
        httpx.AsyncClient(timeout=2) as http,
    ):

        async def realtime_healthy() -> bool:
            try:
                answer = await http.get(f"http://127.0.0.1:{container.health_port}/readyz")
            except httpx.TransportError:
                return False
            body = answer.json()
            return answer.status_code == 200 and (body["realtime"] or {}).get("state") == "healthy"

        await _wait(container, realtime_healthy, 60, "the container was not ready over Realtime")
        yield container


# --- the worker in the container, against the devstack -----------------------------------------


async def test_jobs_complete_in_the_container_woken_by_realtime(running: Container) -> None:
    stack = running.stack
    answers = ["png", "jpeg", "b64_json", "image_url", "cold404:1"]
    ids = {
        answer: (await insert_jobs(stack, 1, prompt=f"a harbour [gen:{answer}]"))[0]
        for answer in answers
    }
    await _wait(running, lambda: all_terminal(stack), 60, "jobs did not finish")
    for answer, job_id in ids.items():
        row = await stack.pool.fetchrow(
            "select * from public.jobs where id = $1", uuid.UUID(job_id)
        )
        assert row["status"] == "complete", (answer, row["error_message"])
        assert row["worker_id"] == running.name
        asset = stack.cloudinary.assets[f"generations/{job_id}"]
        assert row["image_url"] == stack.cloudinary.delivery_url(asset)
        assert row["thumbnail_url"] and row["progress"] == 100
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{running.health_port}/metrics")).text
    realtime_claims = re.search(
        r'image_worker_jobs_claimed_total\{trigger="realtime"\} (\S+)', metrics
    )
    assert realtime_claims and float(realtime_claims.group(1)) >= 1, metrics


async def test_worker_is_pid_1_as_uid_10001(running: Container) -> None:
    probe = (
        "import json, os\n"
        "procs = {}\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    procs[pid] = open(f'/proc/{pid}/cmdline', 'rb').read().decode().split('\\0')[:-1]\n"
        "status = open('/proc/1/status').read()\n"
        "ids = {l.split(':')[0]: l.split()[1:] for l in status.splitlines() if l[:4] in ('Uid:', 'Gid:')}\n"
        "print(json.dumps({'procs': procs, 'ids': ids, 'self': os.getpid()}))\n"
    )
    result = await podman_async("exec", running.name, "python", "-c", probe)
    assert result.code == 0, result.stderr
    seen = json.loads(result.stdout)
    # The console script itself, no shell or init in between: SIGTERM reaches the worker.
    assert seen["procs"]["1"][-2:] == ["/app/.venv/bin/image-worker", "run"], seen["procs"]
    assert Path(seen["procs"]["1"][0]).name.startswith("python")
    others = {
        pid: argv for pid, argv in seen["procs"].items() if pid not in ("1", str(seen["self"]))
    }
    assert others == {}, f"processes besides the worker: {others}"
    # Real, effective, saved and filesystem ids alike.
    assert seen["ids"] == {"Uid": [str(UID)] * 4, "Gid": [str(UID)] * 4}
    # Seen from the host too: not root there either (rootless podman maps it to a sub-uid).
    host_pid = (await podman_async("inspect", "--format", "{{.State.Pid}}", running.name)).stdout
    host_status = await asyncio.to_thread(Path(f"/proc/{host_pid.strip()}/status").read_text)
    host_uid = re.search(r"^Uid:\s+(\d+)", host_status, re.M)
    assert host_uid and int(host_uid.group(1)) != 0


async def test_healthz_answers_on_health_port(running: Container) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        live = await http.get(f"http://127.0.0.1:{running.health_port}/healthz")
        ready = await http.get(f"http://127.0.0.1:{running.health_port}/readyz")
    assert live.status_code == 200, live.text
    assert ready.status_code == 200, ready.text
    assert ready.json()["worker_id"] == running.name and ready.json()["mode"] == "realtime"


async def test_healthcheck_passes_inside_the_container(
    image: BuiltImage, running: Container
) -> None:
    # Only an image in Docker's format keeps HEALTHCHECK (podman's default OCI format drops it).
    config = json.loads(
        (
            await podman_async("image", "inspect", "--format", "{{json .HealthCheck}}", image.tag)
        ).stdout
    )
    assert config and config["Test"][0] == "CMD", config
    check = await podman_async("healthcheck", "run", running.name)
    assert check.code == 0, check.stdout + check.stderr
    health = await podman_async("inspect", "--format", "{{.State.Health.Status}}", running.name)
    assert health.stdout.strip() == "healthy"
    # And the check really asks the worker: pointed at a port nobody serves, it fails.
    closed = await podman_async(
        "exec", "--env", f"HEALTH_PORT={free_port()}", running.name, *config["Test"][1:]
    )
    assert closed.code != 0


async def test_sigterm_drains_releases_and_exits_0_within_the_grace(
    image: BuiltImage, stack: DevStack
) -> None:
    short = await insert_jobs(stack, 2, prompt="short [gen:slow:1]")
    [long] = await insert_jobs(stack, 1, prompt="long [gen:slow:60]")
    async with worker_container(
        image, stack, worker_shutdown_grace_seconds=GRACE_SECONDS, worker_concurrency=4
    ) as container:

        async def all_running() -> bool:
            return (
                await stack.pool.fetchval("select count(*) from jobs where status = 'running'") == 3
            )

        await _wait(container, all_running, 30, "the three jobs were not running")
        sent = time.monotonic()
        # podman stop sends the image's STOPSIGNAL, and SIGKILL only after --time seconds.
        stopped = await podman_async("stop", "--time", "30", container.name, timeout=60)
        elapsed = time.monotonic() - sent
        assert stopped.code == 0, stopped.stderr
        exit_code = await podman_async("inspect", "--format", "{{.State.ExitCode}}", container.name)
        logs = await container.logs()
    assert exit_code.stdout.strip() == "0", logs
    assert elapsed < GRACE_SECONDS + STOP_SLACK_SECONDS, f"stopped in {elapsed:.1f} s"
    assert "SIGTERM: finishing in-flight jobs" in logs
    for job_id in short:
        row = await stack.pool.fetchrow("select * from jobs where id = $1", uuid.UUID(job_id))
        assert row["status"] == "complete", row["error_message"]
    row = await stack.pool.fetchrow("select * from jobs where id = $1", uuid.UUID(long))
    assert (row["status"], row["attempts"], row["lease_token"]) == ("pending", 0, None)


# --- the image's other commands -----------------------------------------------------------------


async def test_status_and_replay_dry_run_through_the_entrypoint(
    image: BuiltImage, stack: DevStack
) -> None:
    await insert_jobs(stack, 2, prompt="waiting")
    failed = str(
        await stack.pool.fetchval(
            "insert into jobs (prompt, status, attempts, error_message, started_at, completed_at,"
            " progress) values ('a storm', 'failed', 3, 'the generator said no',"
            " now() - interval '2 hours', now() - interval '1 hour', 10) returning id"
        )
    )
    # The operator commands need the database settings only.
    env = ["--env", f"SUPABASE_URL={stack.url}"]
    env += ["--env", f"SUPABASE_SERVICE_ROLE_KEY={stack.keys.service_role_key}"]
    command = [*ONE_SHOT, "--network", "host", *env, image.tag]

    status = await podman_async(*command, "status", "--json")
    assert status.code == 0, status.stdout + status.stderr
    counts = json.loads(status.stdout)["counts"]
    assert (counts["pending"], counts["failed"], counts["total"]) == (2, 1, 3)

    replay = await podman_async(*command, "replay", "--failed", "--dry-run", "--json")
    assert replay.code == 0, replay.stdout + replay.stderr
    report = json.loads(replay.stdout)
    assert report["dry_run"] is True
    assert [job["id"] for job in report["would_replay"]] == [failed]
    still = await stack.pool.fetchval("select status from jobs where id = $1", uuid.UUID(failed))
    assert still == "failed"  # a dry run changes nothing


def test_run_without_settings_says_what_is_missing(podman: str, image: BuiltImage) -> None:
    # The default command is `run`; the image bakes in no settings and reads no .env.
    result = podman_sync(podman, *ONE_SHOT, "--network", "none", image.tag)
    assert result.code == 2, result.lines
    assert "configuration error: SUPABASE_URL is required" in result.lines
    assert all(line.startswith("configuration error: ") for line in result.lines), result.lines


def test_demo_says_in_one_line_that_it_needs_a_clone(podman: str, image: BuiltImage) -> None:
    result = podman_sync(podman, *ONE_SHOT, "--network", "none", image.tag, "demo")
    assert len(result.lines) == 1, result.lines
    assert "clone" in result.lines[0] and "Traceback" not in result.lines[0]
    assert result.code == 2, result.lines


def test_every_worker_module_imports_with_the_runtime_dependencies(
    podman: str, image: BuiltImage
) -> None:
    probe = (
        "import importlib, pkgutil, worker\n"
        "names = [m.name for m in pkgutil.walk_packages(worker.__path__, 'worker.')]\n"
        "for name in names:\n"
        "    if not name.endswith('__main__'):\n"
        "        importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    command = [*ONE_SHOT, "--network", "none", "--entrypoint", "python", image.tag, "-c", probe]
    result = podman_sync(podman, *command)
    assert result.code == 0, result.stdout + result.stderr
    assert int(result.stdout) > 10


# --- what the image holds -----------------------------------------------------------------------


def _locked(*flags: str) -> dict[str, str]:
    """name → version of uv.lock's packages for this platform (``uv export``)."""
    exported = subprocess.run(
        [
            os.environ.get("UV", "uv"),
            "export",
            "--frozen",
            "--no-hashes",
            "--no-header",
            "--no-annotate",
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packages = {}
    for line in exported.splitlines():
        requirement, _, marker = line.partition(";")
        if "==" not in requirement or (marker.strip() and not Marker(marker).evaluate()):
            continue
        name, version = requirement.strip().split("==")
        packages[canonicalize_name(name)] = version
    return packages


def test_no_dev_package_in_the_image(podman: str, image: BuiltImage) -> None:
    listing = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))\n"
    )
    command = [*ONE_SHOT, "--network", "none", "--entrypoint", "python", image.tag, "-c", listing]
    result = podman_sync(podman, *command)
    assert result.code == 0, result.stderr
    installed = {canonicalize_name(k): v for k, v in json.loads(result.stdout).items()}
    runtime = _locked("--no-dev", "--no-emit-project")
    dev_only = set(_locked("--all-groups", "--no-emit-workspace")) - set(runtime)
    assert {"pytest", "ruff", "asyncpg", "pillow"} <= dev_only  # the lock was read
    assert sorted(set(installed) & dev_only) == []
    assert "image-worker-devstack" not in installed
    # Exactly the locked runtime dependencies, at their locked versions, and the worker itself.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert installed == {**runtime, project["name"]: project["version"]}


@dataclass
class Filesystem:
    hashes: dict[str, str]  # path in the image → sha256 of its content (regular files)
    with_marker: list[str]  # files holding the decoys' marker
    # Under /app, what the Dockerfile adds (the base's libraries embed self-test keys: GnuTLS).
    app_private_keys: list[str]


@pytest.fixture(scope="module")
def filesystem(podman: str, image: BuiltImage) -> Iterator[Filesystem]:
    """Every regular file of the image, read once from ``podman export`` of a created container."""
    name = f"image-worker-export-{uuid.uuid4().hex[:8]}"
    created = podman_sync(podman, "create", "--no-healthcheck", "--name", name, image.tag)
    assert created.code == 0, created.stderr
    try:
        found = Filesystem({}, [], [])
        marker = image.marker.encode()
        with subprocess.Popen([podman, "export", name], stdout=subprocess.PIPE) as export:
            assert export.stdout is not None
            with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    path = "/" + member.name.removeprefix("./").lstrip("/")
                    found.hashes[path] = hashlib.sha256(data).hexdigest()
                    if marker in data:
                        found.with_marker.append(path)
                    if path.startswith("/app/") and PRIVATE_KEY.search(data):
                        found.app_private_keys.append(path)
        assert export.returncode == 0
        yield found
    finally:
        podman_sync(podman, "rm", "--force", name)


def test_image_holds_no_secret(podman: str, image: BuiltImage, filesystem: Filesystem) -> None:
    assert filesystem.with_marker == [], "the planted secrets reached the image"
    assert filesystem.app_private_keys == []
    dotenv = [p for p in filesystem.hashes if re.fullmatch(r"\.env(\..*)?", Path(p).name)]
    assert dotenv == []
    # Nor in its configuration or history (build-time settings must not be baked in either).
    inspected = json.loads(podman_sync(podman, "image", "inspect", image.tag).stdout)[0]
    env = inspected["Config"]["Env"]
    assert not [entry for entry in env if image.marker in entry]
    # No setting of the worker, and none of the build's (the CA store, uv's options).
    names = [entry.split("=", 1)[0] for entry in env]
    baked = [
        n for n in names if re.search(r"SUPABASE|CLOUDINARY|GENERATOR|SECRET|TOKEN|PASSWORD", n)
    ]
    assert baked == []
    assert [n for n in names if re.match(r"UV_|SSL_CERT|REQUESTS_CA|PIP_", n)] == []
    history = podman_sync(podman, "history", "--no-trunc", "--format", "{{.CreatedBy}}", image.tag)
    assert history.code == 0 and image.marker not in history.stdout


def _digests(root: Path) -> set[str]:
    # Tiny files (empty __init__.py, …) would match unrelated ones.
    return {
        hashlib.sha256(path.read_bytes()).hexdigest()
        for path in root.rglob("*")
        if path.is_file() and path.stat().st_size >= 64 and "__pycache__" not in path.parts
    }


def _package_dir(filesystem: Filesystem) -> str:
    [init] = [p for p in filesystem.hashes if p.endswith("/site-packages/worker/__init__.py")]
    assert init.startswith("/app/.venv/"), init
    return init.removesuffix("__init__.py")


def test_image_holds_no_test_files_and_no_devstack(
    image: BuiltImage, filesystem: Filesystem
) -> None:
    package = _package_dir(filesystem)
    in_package = [p.removeprefix(package) for p in filesystem.hashes if p.startswith(package)]
    testish = [
        p
        for p in in_package
        if "tests" in Path(p).parts
        or re.fullmatch(r"test_.*\.py|.*_test\.py|conftest\.py", Path(p).name)
    ]
    assert testish == []
    assert not [p for p in filesystem.hashes if p.startswith("/app/") and "/devstack/" in p]
    # No file of the project's tests or of the devstack, wherever it might have landed.
    project = _digests(image.context / "tests") | _digests(image.context / "devstack")
    leaked = [p for p, digest in filesystem.hashes.items() if digest in project]
    assert leaked == []


def test_image_ships_this_checkouts_worker_code(image: BuiltImage, filesystem: Filesystem) -> None:
    # Every file of worker/ but the decoys, unchanged: a stale or partial build would differ.
    package = _package_dir(filesystem)
    source = image.context / "worker"
    decoys = {Path(d).relative_to("worker") for d in image.decoys if d.startswith("worker/")}
    expected = {
        str(relative): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in source.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (relative := path.relative_to(source)) not in decoys
        and not any(parent in decoys for parent in relative.parents)
    }
    shipped = {
        p.removeprefix(package): digest
        for p, digest in filesystem.hashes.items()
        if p.startswith(package) and "__pycache__" not in p
    }
    assert shipped == expected
    assert "built for the system test" in (source / "__init__.py").read_text()
