"""JOBS_TABLE is retired (contract v2): `jobs` is still accepted, any other value is refused at
start with one line naming the variable and exit code 2, by every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.settings import JOBS_TABLE, Settings

REFUSAL = (
    "configuration error: JOBS_TABLE: is retired: the worker uses public.jobs; "
    "unset it or set it to jobs"
)
# Nothing listens on port 9: a command that gets past its settings fails to connect, quickly.
MINIMAL_ENV = {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_SERVICE_ROLE_KEY": "service-key"}


def _settings(**values: str) -> Settings:
    return Settings(
        _env_file=None, supabase_url="http://127.0.0.1:9", supabase_service_role_key="k", **values
    )


def test_the_table_is_jobs_by_default_and_jobs_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOBS_TABLE", raising=False)
    assert JOBS_TABLE == "jobs"
    assert _settings().jobs_table == "jobs"
    assert _settings(jobs_table="jobs").jobs_table == "jobs"


@pytest.mark.parametrize("value", ["other", "JOBS", "public.jobs", "jobs2", ""])
def test_any_other_table_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(jobs_table=value)
    (error,) = caught.value.errors()
    assert error["loc"] == ("jobs_table",)
    assert "is retired" in error["msg"]


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A directory without a .env file, and only the given variables: nothing else can interfere.
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**MINIMAL_ENV, **env},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", [["run"], ["status"], ["status", "--json"], ["replay"]])
def test_every_command_refuses_another_table_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    result = _cli(tmp_path, *command, JOBS_TABLE="other")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [REFUSAL]
    assert result.stdout == ""


def test_jobs_table_jobs_is_accepted(tmp_path: Path) -> None:
    status = _cli(tmp_path, "status", JOBS_TABLE="jobs")
    # Past the settings: it tried the database (nothing listens there).
    assert status.returncode == 1
    assert "cannot reach the database at http://127.0.0.1:9" in status.stderr
    assert "JOBS_TABLE" not in status.stderr
    assert "Traceback" not in status.stderr

    run = _cli(tmp_path, "run", JOBS_TABLE="jobs")
    # `run` needs its generator and Cloudinary too; JOBS_TABLE is not what it complains about.
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith("configuration error: ") and "JOBS_TABLE" not in line
