"""``image-worker demo`` as a newcomer runs it: a real command in its own process, piped output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """The demo's TMPDIR, so that leftovers are its own and not those of tests running alongside.
    Under /tmp rather than pytest's tmp_path: when run as root, PostgreSQL runs as another user,
    who must be able to reach its data directory (pytest's directories are private)."""
    path = Path(tempfile.mkdtemp(prefix="image-worker-demo-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_every_job_through_a_realtime_drop(tmp_path: Path, private_tmp: Path) -> None:
    report = tmp_path / "r" / "index.html"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--jobs", "6", "--report", str(report)],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(private_tmp)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr

    # Every job's story, the Realtime drop and the recovery, the summary and the verdict.
    for number in range(1, 7):
        assert f"job {number} (" in out
    assert "complete in" in out
    assert "failed: aspect ratio '5:1' is not one of" in out
    # One job is cancelled midway by the signed-in user who inserted it.
    assert (
        "cancel requested by its user (rpc cancel_job with their JWT; the job was running)" in out
    )
    assert "cancelled after" in out and "nothing uploaded" in out
    assert "cutting the Realtime socket" in out
    assert "realtime: down" in out
    assert "realtime: healthy again" in out
    assert "catch-up done:" in out
    assert "Summary" in out
    assert (
        "all 6 jobs ended as expected: 4 complete, 1 failed on purpose (bad input), "
        "1 cancelled midway by its user"
    ) in out
    assert f"open {report.resolve().as_uri()}" in out
    assert "Traceback" not in out + done.stderr
    assert "Task was destroyed" not in out + done.stderr

    # A self-contained report: one embedded thumbnail per completed job, and the timeline.
    page = report.read_text()
    assert page.count('<img src="data:image/') == 4
    assert "1 cancelled" in page and "cancelled by its user" in page
    assert "<svg" in page and "Realtime dropped" in page
    assert 'src="http' not in page and "<link" not in page  # nothing to fetch when opened
    log = (report.parent / "worker.log").read_text()
    assert "worker stopped" in log
    assert "Task was destroyed" not in log

    # Nothing left behind: the embedded PostgreSQL is stopped and its directory removed.
    assert list(private_tmp.iterdir()) == []
    leftovers = [
        proc.info["pid"]
        for proc in psutil.process_iter(["pid", "cmdline"])
        if str(private_tmp) in " ".join(proc.info["cmdline"] or [])
    ]
    assert leftovers == []


def run_demo_without(module: str) -> subprocess.CompletedProcess[str]:
    """``image-worker demo`` in a process where ``module`` cannot be imported: None in
    sys.modules makes ``import module`` (and of its submodules) raise ModuleNotFoundError."""
    script = (
        f"import sys; sys.modules[{module!r}] = None; "
        "sys.argv = ['image-worker', 'demo']; "
        "from worker.cli import main; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_demo_without_the_devstack_says_it_needs_a_clone() -> None:
    # The runtime image (and `pip install image-worker`) has the worker without its dev group:
    # no devstack, where the demo lives.
    done = run_demo_without("devstack")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs a clone" in lines[0] and "uv run image-worker demo" in lines[0]


def test_demo_does_not_pass_a_broken_devstack_off_as_a_missing_one() -> None:
    # The devstack is there but something it imports is not: that is a broken environment, and
    # the error must say what is missing rather than send people to clone the repository.
    done = run_demo_without("asyncpg")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "ModuleNotFoundError" in done.stderr and "asyncpg" in done.stderr
    assert "needs a clone" not in done.stderr
