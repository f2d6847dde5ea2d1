"""Logs of a whole, eventful run, in both formats: parseable, attributable, and free of secrets.

The worker runs in-process with the real pipeline (devstack generator and Cloudinary) in realtime
mode, through failing jobs (one whose generator echoes the bearer token back), a REST outage and
a Realtime drop; library loggers and library exceptions carrying ``apikey=`` are logged as well.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator

import httpx
import pytest
from loguru import logger

from devstack.stack import DevStack
from tests.helpers import all_terminal, wait_for, worker_settings
from worker.engine.app import Worker
from worker.observability.logs import configure_logging
from worker.settings import Settings


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging() is process-wide; put back what the other tests expect."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logger.remove()
    logger.configure(patcher=lambda record: None)
    logger.add(sys.stderr)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def settings_for(stack: DevStack, log_format: str) -> Settings:
    return worker_settings(
        stack,
        worker_mode="realtime",
        worker_poll_interval_seconds=0.5,
        worker_lease_seconds=10,
        worker_id="logs-test-worker",
        log_format=log_format,
    )


def secrets_of(stack: DevStack) -> dict[str, str]:
    return {
        "service role key": stack.keys.service_role_key,
        "cloudinary secret": stack.cloudinary.api_secret,
        "cloudinary url": stack.env["CLOUDINARY_URL"],
        "generator token": stack.env["GENERATOR_TOKEN"],
    }


async def eventful_run(stack: DevStack, settings: Settings) -> str:
    """Run the worker through failures and outages; return everything it logged."""
    buffer = io.StringIO()
    handler = configure_logging(settings, sink=buffer)
    key = stack.keys.service_role_key
    worker = Worker(settings)
    running = asyncio.create_task(worker.run())
    try:

        async def realtime_healthy() -> bool:
            return worker.realtime is not None and worker.realtime.healthy

        await wait_for(realtime_healthy, timeout=10)
        prompts = [
            "a red fox at dawn",
            "rejected [gen:status:400]",
            "leaky endpoint [gen:echo_auth]",
            "flaky endpoint [gen:status:503:1]",
        ]
        for prompt in prompts:
            await stack.pool.execute("insert into jobs (prompt) values ($1)", prompt)

        stack.rest.fail_for(1.0, status=503)
        stack.realtime.drop_all()
        await asyncio.sleep(1.2)
        await stack.pool.execute("insert into jobs (prompt) values ('after the outage')")

        await wait_for(lambda: all_terminal(stack), timeout=20)

        # Libraries whose exception messages carry the key in a URL, as websockets and httpx do.
        url = f"{stack.url}/realtime/v1/websocket?apikey={key}&vsn=1.0.0"
        logging.getLogger("realtime._async.client").error(f"Connection attempt failed: {url}")
        try:
            raise httpx.ConnectError(f"cannot connect to {stack.url}/rest/v1/jobs?apikey={key}")
        except httpx.ConnectError:
            logging.getLogger("httpx").exception("request failed")
            logger.bind(worker_id=settings.worker_id).exception("a library call failed")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)
        logger.remove(handler)
    return buffer.getvalue()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_logs_carry_ids_and_never_a_secret(stack: DevStack, log_format: str) -> None:
    output = await eventful_run(stack, settings_for(stack, log_format))

    for name, secret in secrets_of(stack).items():
        assert secret not in output, f"the {name} leaked into the {log_format} logs"
    assert "[REDACTED]" in output  # the library exceptions above were there, masked
    # The contract's other half: no secret in the job rows either.
    messages = " ".join(
        r["error_message"] or "" for r in await stack.pool.fetch("select error_message from jobs")
    )
    for secret in secrets_of(stack).values():
        assert secret not in messages

    job_ids = {str(r["id"]) for r in await stack.pool.fetch("select id from jobs")}
    if log_format == "json":
        lines = [json.loads(line) for line in output.splitlines()]
        keys = {"time", "level", "message", "job_id", "worker_id", "logger", "exception"}
        assert all(keys <= set(line) for line in lines)
        started = [line for line in lines if line["message"].startswith("job started")]
        assert {line["job_id"] for line in started} == job_ids
        job_lines = [line for line in lines if line["job_id"] is not None]
        assert job_lines and all(line["worker_id"] == "logs-test-worker" for line in job_lines)
        assert any(
            line["logger"].startswith("realtime") and "apikey=[REDACTED]" in line["message"]
            for line in lines
        )
        tracebacks = [line["exception"] for line in lines if line["exception"]]
        assert any("ConnectError" in text and "apikey=[REDACTED]" in text for text in tracebacks)
        # Library noise stays out at INFO: httpx's per-request lines carry URLs.
        assert not any(line["logger"] == "httpx" and line["level"] == "INFO" for line in lines)
    else:
        started = [line for line in output.splitlines() if "job started" in line]
        assert len(started) >= len(job_ids)
        for job_id in job_ids:
            assert any(job_id in line and "logs-test-worker" in line for line in started)
        assert "[realtime._async.client] Connection attempt failed" in output
        assert "httpx.ConnectError: cannot connect to" in output
        assert "HTTP Request:" not in output  # httpx's INFO request lines


def quiet_settings(**overrides) -> Settings:
    return Settings(
        supabase_url="http://127.0.0.1:54321",
        supabase_service_role_key="service-role-key-that-is-secret",
        generator_token="generator-token-secret",
        worker_id="unit-worker",
        **overrides,
    )


def test_json_lines_stay_valid_json_around_redacted_values() -> None:
    buffer = io.StringIO()
    configure_logging(quiet_settings(log_format="json"), sink=buffer)
    try:
        raise ValueError('upstream said: "apikey=abc123" and "service-role-key-that-is-secret"')
    except ValueError:
        logger.bind(job_id="j-1").exception('failed with "{}"', "generator-token-secret")

    (line,) = [json.loads(text) for text in buffer.getvalue().splitlines()]
    assert line["message"] == 'failed with "[REDACTED]"'
    assert line["job_id"] == "j-1" and line["worker_id"] == "unit-worker"
    assert '"apikey=[REDACTED]" and "[REDACTED]"' in line["exception"]
    assert "secret" not in buffer.getvalue() and "abc123" not in buffer.getvalue()


@pytest.mark.parametrize(("level", "httpx_level"), [("INFO", "WARNING"), ("DEBUG", "INFO")])
def test_library_loggers_go_through_our_sink_at_sensible_levels(level, httpx_level) -> None:
    buffer = io.StringIO()
    configure_logging(quiet_settings(log_level=level), sink=buffer)
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.getLevelName(httpx_level)
    logging.getLogger("httpx").info("HTTP Request: GET http://x/rest/v1/jobs?apikey=abc")
    logging.getLogger("Cloudinary").warning("upload slow for cloudinary://k:s3cr3t@cloud")
    output = buffer.getvalue()
    assert ("HTTP Request" in output) == (level == "DEBUG")
    assert "[Cloudinary] upload slow for cloudinary://k:[REDACTED]@cloud" in output
    assert "unit-worker" in output


ESCAPES = "\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b31m\u202ereversed\r\n2026-01-01 INFO forged line"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_control_characters_from_remote_text_are_escaped_in_the_sink(log_format: str) -> None:
    """Finding 8: text a remote server wrote (quoted in a message, or in an exception) cannot
    drive the terminal that shows the logs, nor start a log line of its own."""
    import re

    from tests.helpers import worker_settings as _unused  # noqa: F401 - the module's imports

    buffer = io.StringIO()
    settings = Settings(
        _env_file=None,
        supabase_url="http://127.0.0.1:9",
        supabase_service_role_key="service-role-key-logs-0123",
        log_format=log_format,
        worker_id="sink-test",
    )
    configure_logging(settings, sink=buffer)
    logger.warning("generator rejected the request: {}", ESCAPES)
    try:
        raise RuntimeError(f"a library quoting a body: {ESCAPES}")
    except RuntimeError:
        logger.exception("job attempt broke unexpectedly")
    logging.getLogger("httpx").warning("library line: %s", ESCAPES)
    output = buffer.getvalue()
    assert "forged line" in output and "red" in output
    lines = output.splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    controls = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
    assert not controls.search(output), repr(output)
    if log_format == "json":
        for line in lines:
            record = json.loads(line)
            assert not controls.search(json.dumps(record, ensure_ascii=False).replace("\\n", ""))
