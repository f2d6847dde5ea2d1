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
    assert "cutting the Realtime socket" in out
    assert "realtime: down" in out
    assert "realtime: healthy again" in out
    assert "catch-up done:" in out
    assert "Summary" in out
    assert "all 6 jobs ended as expected: 5 complete, 1 failed on purpose" in out
    assert f"open {report.resolve().as_uri()}" in out
    assert "Traceback" not in out + done.stderr
    assert "Task was destroyed" not in out + done.stderr

    # A self-contained report: one embedded thumbnail per completed job, and the timeline.
    page = report.read_text()
    assert page.count('<img src="data:image/') == 5
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


def test_demo_without_dev_dependencies_says_how_to_run_it() -> None:
    # The runtime image installs the package without its dev group: no asyncpg, no devstack.
    script = (
        "import sys; sys.modules['asyncpg'] = None; "
        "sys.argv = ['image-worker', 'demo']; "
        "from worker.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "the demo needs the development dependencies: "
        "run it from a clone with `uv run image-worker demo`"
    )
