"""The example app (examples/web) in a real browser, against the devstack and a real worker.

Headless Chromium from Debian's packages, driven by Playwright's Python package
(``executable_path``: no browser download), loads the page, which loads supabase-js from
examples/web/node_modules (``npm ci``) and talks to the stand-ins the way it would talk to a
Supabase project: Auth, PostgREST, Realtime vsn 2.0.0 with Broadcast on a private channel.

Skipped, with the reason, when Chromium or node_modules is missing and cannot be installed here;
under ``CI=true`` that is a failure instead. Screenshots go to a temporary folder whose path the
run prints; with ``SCREENSHOTS_DIR`` set, the README's (``example-app.png``) is also written there:
``SCREENSHOTS_DIR=docs/screenshots uv run pytest tests/system/test_example_app.py`` refreshes it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from devstack.example_site import example_site
from devstack.serve import serve
from devstack.stack import DevStack
from tests.helpers import REPO, running_worker, worker_settings

WEB = REPO / "examples" / "web"
SUPABASE_JS = WEB / "node_modules" / "@supabase" / "supabase-js" / "dist" / "umd" / "supabase.js"
PASSWORDS = {"alice@example.com": "alice-password", "bob@example.com": "bob-password"}
STEP_TIMEOUT_MS = 20_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


def _chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="session")
def example_app_installed() -> Path:
    """examples/web/node_modules, from ``npm ci`` if it is not there yet."""
    if not SUPABASE_JS.exists():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("examples/web/node_modules is missing and npm is not installed")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=WEB,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0 or not SUPABASE_JS.exists():
            _unavailable(f"npm ci in examples/web failed: {done.stderr.strip()[-500:]}")
    return WEB


@dataclass
class Screenshots:
    folder: Path  # every screenshot of the run
    published: Path | None  # $SCREENSHOTS_DIR: the README's copy

    async def take(self, page: Page, name: str, *, publish: bool = False) -> None:
        await page.screenshot(path=self.folder / name, full_page=True)
        if publish and self.published is not None:
            self.published.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.folder / name, self.published / name)


@pytest.fixture(scope="session")
def screenshots() -> Iterator[Screenshots]:
    folder = Path(tempfile.mkdtemp(prefix="image-worker-screenshots-"))
    published = os.environ.get("SCREENSHOTS_DIR")
    yield Screenshots(folder, Path(published) if published else None)
    print(f"\nexample app screenshots: {folder}")


@pytest_asyncio.fixture(scope="session")
async def browser(example_app_installed: Path) -> AsyncIterator[Browser]:
    executable = _chromium()
    if executable is None:
        _unavailable("Chromium is not installed (Debian: apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox"]
        )
        yield browser
        await browser.close()


@dataclass
class ExampleApp:
    stack: DevStack
    url: str
    users: dict[str, str]  # email -> user id
    errors: list[str] = field(default_factory=list)  # console errors and page errors, all pages
    contexts: list[BrowserContext] = field(default_factory=list)

    async def open(self, browser: Browser) -> Page:
        """A page in a browser context of its own (its own storage: one signed-in user)."""
        context = await browser.new_context(viewport={"width": 900, "height": 800})
        self.contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        await page.goto(self.url)
        return page

    async def sign_in(self, browser: Browser, email: str) -> Page:
        page = await self.open(browser)
        await page.fill("#email", email)
        await page.fill("#password", PASSWORDS[email])
        await page.click("#sign-in button[type=submit]")
        await expect(page.locator("#who")).to_have_text(email, timeout=STEP_TIMEOUT_MS)
        await expect(page.locator("#live")).to_have_text("live", timeout=STEP_TIMEOUT_MS)
        return page


@pytest_asyncio.fixture
async def app(stack: DevStack, example_app_installed: Path) -> AsyncIterator[ExampleApp]:
    users = {email: stack.create_user(email, password).id for email, password in PASSWORDS.items()}
    settings = worker_settings(stack, worker_mode="realtime", worker_lease_seconds=10)
    runner, url = await serve(example_site(stack.url, stack.keys.anon_key), "127.0.0.1")
    example = ExampleApp(stack, url + "/", users)
    try:
        async with running_worker(settings):
            yield example
    finally:
        for context in example.contexts:
            await context.close()
        await runner.cleanup()


async def submit(page: Page, prompt: str, ratio: str = "1:1") -> str:
    """Submit a prompt; the new job's id (its card appears at the top)."""
    before = await page.locator(".job").count()
    await page.fill("#prompt", prompt)
    await page.select_option("#aspect-ratio", ratio)
    await page.click("#submit button[type=submit]")
    await expect(page.locator(".job")).to_have_count(before + 1, timeout=STEP_TIMEOUT_MS)
    card = page.locator(".job").first
    await expect(card.locator(".prompt")).to_have_text(prompt, timeout=STEP_TIMEOUT_MS)
    job_id = await card.get_attribute("data-job-id")
    assert job_id is not None
    return job_id


def card(page: Page, job_id: str):
    return page.locator(f'.job[data-job-id="{job_id}"]')


async def timeline(page: Page, job_id: str) -> list[str]:
    """The updates the page received over Broadcast, as "status progress%"."""
    texts = await card(page, job_id).locator(".timeline li").all_inner_texts()
    return [re.sub(r"^\S+ (AM |PM )?", "", text) for text in texts]


async def test_sign_in_submit_watch_the_image_appear_and_cancel_a_second_job(
    app: ExampleApp, browser: Browser, screenshots: Screenshots
) -> None:
    stack = app.stack
    stack.generator.default_behaviour = "slow:2"  # so there is a "running 10%" to see
    page = await app.sign_in(browser, "alice@example.com")

    first = await submit(page, "A lighthouse at dusk, oil painting", "16:9")
    await expect(card(page, first)).to_have_attribute(
        "data-status", "running", timeout=STEP_TIMEOUT_MS
    )
    await expect(card(page, first).locator("progress")).to_have_attribute("value", "10")
    await expect(card(page, first)).to_have_attribute(
        "data-status", "complete", timeout=STEP_TIMEOUT_MS
    )
    assert await timeline(page, first) == [
        "pending 0%",
        "running 10%",
        "running 60%",
        "complete 100%",
    ]

    row = await stack.pool.fetchrow(
        "select user_id, aspect_ratio, image_url, thumbnail_url from public.jobs where id = $1",
        uuid.UUID(first),
    )
    assert str(row["user_id"]) == app.users["alice@example.com"] and row["aspect_ratio"] == "16:9"
    image, thumbnail = card(page, first).locator(".image"), card(page, first).locator(".thumbnail")
    await expect(image).to_have_attribute("src", row["image_url"])
    await expect(thumbnail).to_have_attribute("src", row["thumbnail_url"])
    size = await image.evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]")
    # The image itself: 16:9, in the generator's sizes (multiples of 64, 1344×768).
    assert size and abs(size[0] / size[1] - 16 / 9) < 0.05, size
    assert await thumbnail.evaluate("img => img.complete && img.naturalWidth") == 256

    stack.generator.default_behaviour = "hang"  # the second job stays running until cancelled
    second = await submit(page, "A second thought")
    await expect(card(page, second)).to_have_attribute(
        "data-status", "running", timeout=STEP_TIMEOUT_MS
    )
    cancelled_at = time.monotonic()
    await card(page, second).locator(".cancel").click()
    await expect(card(page, second)).to_have_attribute(
        "data-status", "cancelled", timeout=STEP_TIMEOUT_MS
    )
    assert time.monotonic() - cancelled_at < 5  # contract: within 2 s in realtime mode, + the page
    await expect(card(page, second).locator(".cancel")).to_be_hidden()
    status = await stack.pool.fetchval(
        "select status from public.jobs where id = $1", uuid.UUID(second)
    )
    assert status == "cancelled"
    assert (await timeline(page, second))[-1].startswith("cancelled")

    await screenshots.take(page, "example-app.png", publish=True)
    assert app.errors == []


async def test_a_failed_job_shows_its_reason(
    app: ExampleApp, browser: Browser, screenshots: Screenshots
) -> None:
    page = await app.sign_in(browser, "alice@example.com")
    job = await submit(page, "Something the provider refuses [gen:status:400]")
    await expect(card(page, job)).to_have_attribute(
        "data-status", "failed", timeout=STEP_TIMEOUT_MS
    )
    reason = await app.stack.pool.fetchval(
        "select error_message from public.jobs where id = $1", uuid.UUID(job)
    )
    assert reason
    await expect(card(page, job).locator(".error")).to_have_text(reason)
    await expect(card(page, job).locator(".result")).to_be_hidden()
    await screenshots.take(page, "example-app-failed.png")
    assert app.errors == []


async def test_another_user_never_sees_the_first_users_jobs_or_events(
    app: ExampleApp, browser: Browser, screenshots: Screenshots
) -> None:
    alice_id = app.users["alice@example.com"]
    alice = await app.sign_in(browser, "alice@example.com")
    bob = await app.sign_in(browser, "bob@example.com")
    # Everything bob's browser receives from Realtime, whatever the app does with it.
    await bob.evaluate(
        """() => {
          window.seen = { updates: [], changes: [], intrusion: [] }
          window.addEventListener('job-update', (e) => window.seen.updates.push(e.detail))
          client.channel('bob-watches-jobs')
            .on('postgres_changes', { event: '*', schema: 'public', table: 'jobs' },
                (change) => window.seen.changes.push(change.new.id))
            .subscribe((status) => { window.seen.pgStatus = status })
        }"""
    )
    # bob asks for alice's private topic himself: Realtime Authorization refuses the join.
    await bob.evaluate(
        """(aliceId) => client.channel(`jobs:${aliceId}`, { config: { private: true } })
             .subscribe((status, err) => window.seen.intrusion.push([status, err?.message]))""",
        alice_id,
    )
    await bob.wait_for_function("window.seen.pgStatus === 'SUBSCRIBED'", timeout=STEP_TIMEOUT_MS)
    await bob.wait_for_function("window.seen.intrusion.length > 0", timeout=STEP_TIMEOUT_MS)

    alice_jobs = [await submit(alice, f"alice's secret #{n}") for n in range(2)]
    for job in alice_jobs:
        await expect(card(alice, job)).to_have_attribute(
            "data-status", "complete", timeout=STEP_TIMEOUT_MS
        )
    bob_job = await submit(bob, "bob's own")
    await expect(card(bob, bob_job)).to_have_attribute(
        "data-status", "complete", timeout=STEP_TIMEOUT_MS
    )
    await bob.wait_for_function(
        f"window.seen.changes.filter((id) => id === '{bob_job}').length >= 3",
        timeout=STEP_TIMEOUT_MS,
    )

    seen: dict[str, Any] = await bob.evaluate("window.seen")
    assert {u["id"] for u in seen["updates"]} == {bob_job}
    assert set(seen["changes"]) == {bob_job}  # RLS on postgres_changes
    status, message = seen["intrusion"][0]
    assert status == "CHANNEL_ERROR" and "Unauthorized" in message, seen["intrusion"]
    assert await bob.locator(".job").count() == 1
    for job in alice_jobs:
        assert await card(bob, job).count() == 0
    assert "alice" not in await bob.locator("#jobs").inner_text()
    # And alice's page holds only her own.
    assert await card(alice, bob_job).count() == 0

    await screenshots.take(bob, "example-app-second-user.png")
    assert app.errors == []
