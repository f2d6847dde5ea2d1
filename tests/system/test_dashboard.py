"""`image-worker dashboard` in a real browser: Debian's headless Chromium driven by Playwright
(``executable_path``: no browser download), against the devstack with a real worker process
running a slow job.

The page must show the running job's progress, worker and lease, and a failure with its reason
(as text, even when the reason is markup); an action without the token is refused, in the page
and as a bare POST; with the token, replay requeues the failed job (which the worker then
completes) and cancel stops the running one. A dashboard without DASHBOARD_TOKEN shows no
buttons and refuses every action.

Screenshots go to the test's temporary folder (the path is printed); with ``SCREENSHOTS_DIR``
set, the page with the running jobs and the failure is also written there as ``dashboard.png``
(``SCREENSHOTS_DIR=docs/screenshots`` refreshes the README's copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from devstack.stack import DevStack
from tests.helpers import REPO, spawn_worker, wait_for, worker_env

TOKEN = "dashboard-test-token-0123456789"
XSS = '<img src=x onerror="document.body.dataset.pwned=1">'


def chromium_path() -> str:
    """Debian's chromium; a missing one skips these tests, except in CI where it must be there."""
    for candidate in (
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    reason = (
        "the dashboard's browser tests need Debian's chromium (apt-get install chromium); "
        "Playwright drives it with executable_path and downloads no browser"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but no chromium: {reason}")
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def dashboard_process(
    stack: DevStack, log_dir: Path, token: str | None
) -> AsyncIterator[str]:
    """``image-worker dashboard --port 0`` as the operator runs it; yields its URL."""
    env = {**os.environ, **stack.env, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"}
    env.pop("DASHBOARD_TOKEN", None)
    if token:
        env["DASHBOARD_TOKEN"] = token
    log = open(log_dir / f"dashboard-{'token' if token else 'read-only'}.log", "wb")  # noqa: SIM115, ASYNC230
    # asyncio's subprocess, not subprocess.run: the devstack serves from this very event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "dashboard", "--port", "0",
        env=env, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=log,
    )  # fmt: skip
    assert process.stdout is not None
    drain: asyncio.Task | None = None
    try:
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = (await process.stdout.readline()).decode()
                assert line, f"the dashboard exited: see {log.name}"
                if match := re.match(r"dashboard: (http://\S+)", line):
                    url = match.group(1)
        drain = asyncio.create_task(process.stdout.read())  # never let the pipe fill
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            async with asyncio.timeout(15):
                await process.wait()
        if drain is not None:
            drain.cancel()
        log.close()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    path = chromium_path()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str, problems: list[str]) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" and "401" not in message.text and "403" not in message.text
            else None
        ),
    )
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.goto(url)
    await expect(page.locator("body[data-loaded=true]")).to_be_attached(timeout=15_000)
    return page


async def job(stack: DevStack, job_id: str) -> dict:
    return dict(await stack.pool.fetchrow("select * from jobs where id = $1", job_id))


async def insert_job(stack: DevStack, prompt: str) -> str:
    return str(
        await stack.pool.fetchval("insert into jobs (prompt) values ($1) returning id", prompt)
    )


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


# The past hour of a busy project, as rows (the chart and the pickups read finished jobs): 2-7
# jobs a minute, now and then a failure, mostly woken by Realtime.
PAST_HOUR = """
insert into jobs (prompt, status, progress, attempts, created_at, started_at, completed_at,
  claim_trigger, error_message, worker_id)
select 'earlier work #' || g || '.' || k,
  case when k = 1 and g % 7 = 3 then 'failed' else 'complete' end,
  100, 1,
  now() - g * interval '1 minute' - interval '20 seconds',
  now() - g * interval '1 minute' - interval '12 seconds',
  now() - g * interval '1 minute',
  (array['realtime', 'realtime', 'realtime', 'realtime', 'catchup', 'poll'])[1 + (g + k) % 6],
  case when k = 1 and g % 7 = 3 then 'generator rejected the request: HTTP 400' end,
  'dashboard-test-worker'
from generate_series(2, 58) as g, generate_series(1, 2 + (g * 7) % 6) as k
"""


async def test_dashboard_shows_progress_and_failures_and_acts_only_with_the_token(
    stack: DevStack, screenshots: Path
) -> None:
    chromium_path()  # skip (or fail in CI) before starting anything
    env = worker_env(
        stack,
        WORKER_MODE="realtime",
        WORKER_CONCURRENCY="2",
        WORKER_LEASE_SECONDS="30",
        GENERATOR_TIMEOUT_SECONDS="150",
        WORKER_SHUTDOWN_GRACE_SECONDS="1",
    )
    await stack.pool.execute(PAST_HOUR)
    worker = spawn_worker(env, "dashboard-test-worker")
    try:
        # Refused by the generator the first time only: after a replay it completes.
        refused = await insert_job(stack, "a forbidden castle [gen:status:400:1]")
        done = [await insert_job(stack, f"a red fox #{i}") for i in range(3)]

        async def statuses_are(expected: dict[str, str]) -> bool:
            return {j: (await job(stack, j))["status"] for j in expected} == expected

        await wait_for(
            lambda: statuses_are({refused: "failed", **dict.fromkeys(done, "complete")}),
            timeout=60,
            interval=0.2,
        )
        reason = (await job(stack, refused))["error_message"]
        assert "content filter" in reason
        # Two slow jobs take both slots; two more wait behind them.
        slow = [await insert_job(stack, f"a paper boat on a slow river #{i} [gen:slow:140]") for i in range(2)]  # fmt: skip
        await wait_for(lambda: statuses_are(dict.fromkeys(slow, "running")), timeout=30)
        waiting = [await insert_job(stack, f"a lighthouse at dusk #{i}") for i in range(2)]
        finished = await stack.pool.fetchrow(
            "select count(*) filter (where status = 'complete') as complete,"
            "  count(*) filter (where status = 'failed') as failed from jobs"
        )

        problems: list[str] = []
        async with (
            dashboard_process(stack, screenshots, TOKEN) as url,
            chromium() as browser,
        ):
            page = await open_page(browser, url, problems)

            # The running jobs: progress, worker, lease left.
            running = page.locator(f"#running tr[data-job-id='{slow[0]}']")
            await expect(running).to_contain_text("10%")
            await expect(running).to_contain_text("dashboard-test-worker")
            await expect(running).to_contain_text(re.compile(r"\d+s left"))
            await expect(page.locator("[data-status=running] .value")).to_have_text("2")
            await expect(page.locator("[data-status=pending] .value")).to_have_text("2")
            for job_id in waiting:
                await expect(page.locator(f"#pending tr[data-job-id='{job_id}']")).to_be_visible()
            # The last hour, per minute, and how the jobs were picked up.
            await expect(page.locator("#chart-summary")).to_contain_text(
                f"{finished['complete']} complete, {finished['failed']} failed"
            )
            assert await page.locator("#chart svg rect.bar-complete").count() > 50
            await expect(page.locator("#pickups")).to_contain_text("by Realtime push")
            # The failure, with its reason.
            failure = page.locator(f"#failures tr[data-job-id='{refused}']")
            await expect(failure).to_contain_text(reason)
            await page.screenshot(path=screenshots / "dashboard.png", full_page=True)
            if target := os.environ.get("SCREENSHOTS_DIR"):
                os.makedirs(target, exist_ok=True)
                shutil.copyfile(
                    screenshots / "dashboard.png", os.path.join(target, "dashboard.png")
                )

            # A reason that is markup shows as text and runs nothing.
            hostile = str(
                await stack.pool.fetchval(
                    "insert into jobs (prompt, status, attempts, started_at, completed_at, "
                    "error_message) values ('x', 'failed', 1, now(), now(), $1) returning id",
                    XSS,
                )
            )
            await expect(page.locator(f"#failures tr[data-job-id='{hostile}']")).to_contain_text(
                XSS, timeout=10_000
            )
            assert await page.locator("#failures img").count() == 0
            assert await page.evaluate("document.body.dataset.pwned") is None

            # Without the token: the page's button is refused, and so is a bare POST.
            replay_button = failure.get_by_role("button", name=f"replay job {refused}")
            await replay_button.click()
            await expect(page.locator("#flash")).to_contain_text("Refused (HTTP 401)")
            await page.screenshot(path=screenshots / "dashboard-refused.png", full_page=True)
            for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
                answer = await page.request.post(f"{url}api/jobs/{refused}/replay", headers=headers)
                assert answer.status == 401
            forged = await page.request.post(
                f"{url}api/jobs/{refused}/replay",
                headers={"Authorization": f"Bearer {TOKEN}", "Origin": "https://evil.example"},
            )
            assert forged.status == 403
            assert (await job(stack, refused))["status"] == "failed"

            # With the token, typed once for this tab: replay requeues it (both slots are busy,
            # so it waits, pending) ...
            await page.fill("#token-input", TOKEN)
            await page.click("#token-form button[type=submit]")
            await expect(page.locator("#token-state")).to_have_text("token set for this tab")
            await replay_button.click()
            await expect(page.locator("#flash")).to_contain_text(
                f"Job {refused}: replayed: back to pending (was failed)"
            )
            row = await job(stack, refused)
            assert (row["status"], row["attempts"]) == ("pending", 0)
            assert row["replay_reason"].startswith("image-worker dashboard, from 127.0.0.1")
            await expect(page.locator(f"#pending tr[data-job-id='{refused}']")).to_be_visible()

            # ... and cancelling a slow job frees a slot: its worker stops it and marks it
            # cancelled, then completes the replayed job.
            await running.get_by_role("button", name=f"cancel job {slow[0]}").click()
            await expect(page.locator("#flash")).to_contain_text("cancel requested")
            await wait_for(lambda: statuses_are({slow[0]: "cancelled"}), timeout=30)
            await wait_for(lambda: statuses_are({refused: "complete"}), timeout=30)
            await expect(page.locator(f"#running tr[data-job-id='{slow[0]}']")).to_have_count(
                0, timeout=10_000
            )
            await expect(page.locator(f"#failures tr[data-job-id='{refused}']")).to_have_count(0)
            await expect(page.locator("[data-status=cancelled] .value")).to_have_text("1")
            await page.screenshot(path=screenshots / "dashboard-after-actions.png", full_page=True)
        assert problems == []
        print(f"\ndashboard screenshots: {screenshots}")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


async def test_read_only_dashboard_shows_no_buttons_and_refuses_every_action(
    stack: DevStack, screenshots: Path
) -> None:
    chromium_path()
    failed = str(
        await stack.pool.fetchval(
            "insert into jobs (prompt, status, attempts, started_at, completed_at, error_message) "
            "values ('x', 'failed', 1, now(), now(), 'the generator said no') returning id"
        )
    )
    pending = await insert_job(stack, "waiting for a worker")
    problems: list[str] = []
    async with dashboard_process(stack, screenshots, None) as url, chromium() as browser:
        page = await open_page(browser, url, problems)
        await expect(page.locator(f"#failures tr[data-job-id='{failed}']")).to_contain_text(
            "the generator said no"
        )
        await expect(page.locator(f"#pending tr[data-job-id='{pending}']")).to_be_visible()
        await expect(page.locator("#connection")).to_contain_text("read-only")
        assert await page.locator("button[data-action]").count() == 0
        assert await page.locator("#token-form").is_hidden()
        await page.screenshot(path=screenshots / "dashboard-read-only.png", full_page=True)
        for action, job_id in (("replay", failed), ("cancel", pending)):
            answer = await page.request.post(
                f"{url}api/jobs/{job_id}/{action}", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert answer.status == 403
            assert "read-only" in (await answer.json())["message"]
    assert (await job(stack, failed))["status"] == "failed"
    assert (await job(stack, pending))["status"] == "pending"
    assert problems == []


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """The demo's TMPDIR, world-traversable: as root, the embedded PostgreSQL runs as another
    user, who must reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix="image-worker-demo-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_demo_keep_running_serves_the_dashboard_and_prints_its_url(
    tmp_path: Path, private_tmp: Path
) -> None:
    """``demo --keep-running``: after the summary, the dashboard of the demo stack is up, its URL
    and a token printed; the token works; Ctrl-C stops everything."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "demo", "--jobs", "2", "--keep-running",
        "--report", str(tmp_path / "report" / "index.html"),
        cwd=REPO, env={**os.environ, "TMPDIR": str(private_tmp), "PYTHONUNBUFFERED": "1"},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    out: list[str] = []
    try:
        url = token = None
        async with asyncio.timeout(120):
            while token is None:
                line = (await process.stdout.readline()).decode()
                assert line, "".join(out)
                out.append(line)
                if match := re.match(r"dashboard: (http://127\.0\.0\.1:\d+/)$", line.strip()):
                    url = match.group(1)
                if match := re.search(r"token for the replay and cancel buttons: (\S+)", line):
                    token = match.group(1)
        assert url is not None, "".join(out)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            overview = (await http.get("api/overview")).json()
            assert overview["counts"]["total"] == 2 and overview["actions"] is True
            unknown = f"api/jobs/{uuid.uuid4()}/cancel"
            assert (await http.post(unknown)).status_code == 401
            answer = await http.post(unknown, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 404  # past the token check: no such job
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            rest = await process.stdout.read()
            await process.wait()
    text = "".join(out) + rest.decode()
    assert process.returncode == 0, text
    assert "Traceback" not in text
    assert "stack stopped" in text
