"""Finding 7: a bad setting is one line naming the variable and exit code 2, at start; never a
traceback later, never a worker that sleeps forever or sends keys in clear text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.settings import Settings

# Placeholders, not credentials: the URLs are assembled so no key:secret pair stands in the source.
KEY, SECRET = "test-api-key", "placeholder-not-a-secret"

# A command that gets past its settings fails fast: nothing listens on port 9.
LOCAL = {
    "SUPABASE_URL": "http://127.0.0.1:9",
    "SUPABASE_SERVICE_ROLE_KEY": "service-key",
    "GENERATOR_URL": "http://127.0.0.1:9/generate",
    "CLOUDINARY_URL": f"cloudinary://{KEY}:{SECRET}@demo",
    "HEALTH_PORT": "0",
}


def settings(**values: Any) -> Settings:
    env = {k.lower(): v for k, v in LOCAL.items()}
    return Settings(_env_file=None, **{**env, **values})


def refused(field: str, **values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    errors = caught.value.errors()
    assert [e["loc"][0] for e in errors] == [field], errors
    return errors[0]["msg"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"cloudinary://{KEY}@demo", "no API secret"),
        (f"cloudinary://{KEY}:@demo", "no API secret"),
        (f"cloudinary://:{SECRET}@demo", "no API key"),
        (f"cloudinary://{KEY}:{SECRET}@", "no cloud name"),
        ("cloudinary://demo", "no API key"),
    ],
)
def test_an_incomplete_cloudinary_url_is_refused_at_start(url: str, problem: str) -> None:
    message = refused("cloudinary_url", cloudinary_url=url)
    assert problem in message
    assert SECRET not in message  # the secret is never repeated back


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("generator_retry_delays", "nan"),
        ("generator_retry_delays", "10,inf"),
        ("generator_retry_delays", "1e400"),
        ("worker_lease_seconds", "inf"),
        ("worker_lease_seconds", "nan"),
        ("worker_poll_interval_seconds", "inf"),
        ("worker_shutdown_grace_seconds", "nan"),
        ("generator_timeout_seconds", "inf"),
        ("worker_lease_seconds", "1e12"),
        ("job_max_attempts", "99999999999"),
    ],
)
def test_non_finite_and_absurd_numbers_are_refused(field: str, value: str) -> None:
    refused(field, **{field: value})


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("supabase_url", "http://abcdefgh.supabase.co"),
        ("supabase_url", "http://10.0.0.5:8000"),
        ("generator_url", "http://generator.example.com/generate"),
        ("cloudinary_url", f"cloudinary://{KEY}:{SECRET}@demo?upload_prefix=http://api.example"),
    ],
)
def test_plain_http_to_another_host_needs_an_explicit_opt_in(field: str, url: str) -> None:
    message = refused(field, **{field: url})
    assert "ALLOW_INSECURE_HTTP" in message
    assert getattr(settings(**{field: url, "allow_insecure_http": "true"}), field)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:54321",
        "http://localhost:54321",
        "http://[::1]:54321",
        "http://127.8.0.1",
        "http://api.localhost:8000",
        "https://abcdefgh.supabase.co",
    ],
)
def test_loopback_http_and_https_need_nothing(url: str) -> None:
    assert settings(supabase_url=url, generator_url=url).supabase_url == url


def _cli(tmp_path: Path, command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", command],
        env={**LOCAL, **env},
        cwd=tmp_path,  # no .env here
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLOUDINARY_URL", f"cloudinary://{KEY}@demo"),
        ("GENERATOR_RETRY_DELAYS", "nan"),
        ("WORKER_LEASE_SECONDS", "inf"),
        ("SUPABASE_URL", "http://abcdefgh.supabase.co"),
        ("GENERATOR_URL", "http://generator.example.com/generate"),
    ],
)
def test_the_cli_says_one_line_and_exits_2(tmp_path: Path, variable: str, value: str) -> None:
    result = _cli(tmp_path, "run", **{variable: value})
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-2000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"configuration error: {variable}: ")


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "127.0.0.1", "::", "[::1]", "localhost", "pod-1.local"]
)
def test_health_host_takes_an_address_or_a_name(host: str) -> None:
    assert settings(health_host=host).health_host == host.strip("[]")


@pytest.mark.parametrize("host", ["", "0.0.0.0:8080", "two words", "http://0.0.0.0"])
def test_health_host_refuses_anything_else(host: str) -> None:
    refused("health_host", health_host=host)
