"""The dashboard's web application without a database: what it serves, and every check an action
passes (host, cross-site, origin, token) before it reaches the database."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from loguru import logger
from pydantic import ValidationError

from tests.helpers import REPO
from worker.ops.dashboard.server import CONTENT_SECURITY_POLICY, Dashboard
from worker.settings import Settings
from worker.store import StoreError
from worker.store.operations import Candidate, ReplayCriteria, Replayed

TOKEN = "a-long-enough-dashboard-token-42"
FAILED = str(uuid.uuid4())
LIVE = str(uuid.uuid4())
CANCELLED = str(uuid.uuid4())


def settings(**values: Any) -> Settings:
    base = {"supabase_url": "http://127.0.0.1:9", "supabase_service_role_key": "service-key-xyz"}
    return Settings(_env_file=None, **{**base, **values})


def candidate(job_id: str, status: str, *, eligible: bool, lease_live: bool = False) -> Candidate:
    return Candidate(
        id=job_id, status=status, attempts=1, worker_id="w", error_message=None,
        age_seconds=5.0, lease_seconds_left=None, lease_live=lease_live, eligible=eligible,
    )  # fmt: skip


class FakeQueries:
    """OperatorQueries' answers for three jobs: failed, running under a live lease, cancelled."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_with: StoreError | None = None

    async def dashboard(self, list_limit: int, window_seconds: int, count_cap: int) -> dict:
        self.calls.append(("dashboard", (list_limit, window_seconds, count_cap)))
        if self.fail_with:
            raise self.fail_with
        return {
            "counts": {"pending": 1, "running": 1, "complete": 0, "failed": 1, "cancelled": 1},
            "recent_failures": [
                {"id": FAILED, "error_message": "refused: token sk-secret-value-123456 <b>x</b>"}
            ],
            "running": None,
        }

    async def replay_candidates(self, criteria: ReplayCriteria, limit: int) -> list[Candidate]:
        self.calls.append(("replay_candidates", criteria.job_ids))
        jobs = {
            FAILED: candidate(FAILED, "failed", eligible=True),
            LIVE: candidate(LIVE, "running", eligible=True, lease_live=True),
            CANCELLED: candidate(CANCELLED, "cancelled", eligible=False),
        }
        return [jobs[i] for i in criteria.job_ids if i in jobs]

    async def replay(self, ids: list[str], criteria: ReplayCriteria, reason: str) -> list:
        self.calls.append(("replay", (tuple(ids), criteria, reason)))
        return [Replayed(id=i, old_status="failed", attempts=3, worker_id="w", age_seconds=1.0) for i in ids]  # fmt: skip

    async def cancel(self, job_id: str) -> str | None:
        self.calls.append(("cancel", job_id))
        return {LIVE: "running", FAILED: "failed"}.get(job_id)

    def changes(self) -> list[tuple[str, Any]]:
        return [c for c in self.calls if c[0] in ("replay", "cancel")]


@pytest_asyncio.fixture
async def fake() -> FakeQueries:
    return FakeQueries()


@pytest.fixture
def capture_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
    yield lines
    logger.remove(sink)


async def client_for(fake: FakeQueries, *, host: str = "127.0.0.1", **values: Any) -> TestClient:
    from worker.observability.redact import redact

    redact.add(["sk-secret-value-123456"])
    dashboard = Dashboard(settings(**values), fake, host=host)
    client = TestClient(TestServer(dashboard.app(), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def armed(fake: FakeQueries) -> AsyncIterator[TestClient]:
    client = await client_for(fake, dashboard_token=TOKEN)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def read_only(fake: FakeQueries) -> AsyncIterator[TestClient]:
    client = await client_for(fake)
    yield client
    await client.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_serves_the_page_its_files_and_the_overview(armed: TestClient) -> None:
    page = await armed.get("/")
    assert page.status == 200
    html = await page.text()
    assert '<script src="static/dashboard.js" defer></script>' in html
    assert "<script>" not in html  # no inline script: the CSP allows none
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        response = await armed.get(f"/static/{name}")
        assert response.status == 200 and kind in response.headers["Content-Type"]
        assert "textContent" in await response.text() or kind == "css"
    assert (await armed.get("/static/../server.py")).status == 404
    assert (await armed.get("/static/nope.js")).status == 404

    overview = await armed.get("/api/overview")
    assert overview.status == 200
    document = await overview.json()
    assert document["actions"] is True
    assert document["running"] == []  # null lists become empty ones
    reason = document["recent_failures"][0]["error_message"]
    assert "sk-secret-value-123456" not in reason  # redacted
    assert "<b>x</b>" in reason  # data stays data; the page shows it as text


@pytest.mark.parametrize("path", ["/", "/api/overview", "/static/dashboard.js", "/nowhere"])
async def test_every_response_carries_the_security_headers(armed: TestClient, path: str) -> None:
    response = await armed.get(path)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in response.headers


async def test_one_database_read_serves_the_refreshes_of_every_tab(
    armed: TestClient, fake: FakeQueries
) -> None:
    for _ in range(5):
        assert (await armed.get("/api/overview")).status == 200
    assert [c for c in fake.calls if c[0] == "dashboard"] == [("dashboard", (20, 3600, 10000))]


async def test_a_database_error_is_a_503_the_page_can_show(fake: FakeQueries) -> None:
    fake.fail_with = StoreError(
        "dashboard", "PGRST202: Could not find the function public.image_worker_dashboard"
    )
    client = await client_for(fake)
    try:
        response = await client.get("/api/overview")
        assert response.status == 503
        assert "20261127000500_image_worker_dashboard.sql" in (await response.json())["error"]
    finally:
        await client.close()


async def test_a_loopback_dashboard_answers_only_loopback_host_names(armed: TestClient) -> None:
    # DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example.
    for host in ("evil.example:8090", "evil.example", "10.0.0.5:8090"):
        response = await armed.get("/api/overview", headers={"Host": host})
        assert response.status == 421, host
    for host in ("localhost:8090", "127.0.0.1:8090", "[::1]:8090"):
        assert (await armed.get("/api/overview", headers={"Host": host})).status == 200, host


async def test_a_dashboard_on_another_address_answers_any_host(fake: FakeQueries) -> None:
    client = await client_for(fake, host="0.0.0.0")
    try:
        response = await client.get("/api/overview", headers={"Host": "dash.example.com"})
        assert response.status == 200
    finally:
        await client.close()


async def test_read_only_refuses_every_action_even_with_a_token(
    read_only: TestClient, fake: FakeQueries
) -> None:
    assert (await (await read_only.get("/api/overview")).json())["actions"] is False
    for action in ("replay", "cancel"):
        for headers in ({}, bearer(), bearer("")):
            response = await read_only.post(f"/api/jobs/{FAILED}/{action}", headers=headers)
            assert response.status == 403
            assert "read-only" in (await response.json())["message"]
    assert fake.changes() == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"X-Dashboard-Token": TOKEN},
        {"Cookie": f"token={TOKEN}"},
    ],
)
async def test_an_action_without_the_token_is_401(
    armed: TestClient, fake: FakeQueries, headers: dict[str, str]
) -> None:
    for action in ("replay", "cancel"):
        response = await armed.post(f"/api/jobs/{FAILED}/{action}", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in (await response.json())["message"]
    assert fake.changes() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "same"},
    ],
)
async def test_a_cross_site_action_is_403_even_with_the_token(
    armed: TestClient, fake: FakeQueries, headers: dict[str, str]
) -> None:
    own = f"http://127.0.0.1:{armed.port}"
    headers = {k: (own if v == "same" else v) for k, v in headers.items()}
    response = await armed.post(f"/api/jobs/{FAILED}/replay", headers={**bearer(), **headers})
    assert response.status == 403
    assert fake.changes() == []


async def test_a_same_origin_action_with_the_token_replays_and_is_logged(
    armed: TestClient, fake: FakeQueries, capture_logs: list[str]
) -> None:
    own = f"http://127.0.0.1:{armed.port}"
    headers = {**bearer(), "Origin": own, "Sec-Fetch-Site": "same-origin"}
    response = await armed.post(f"/api/jobs/{FAILED}/replay", headers=headers)
    assert response.status == 200
    body = await response.json()
    assert body == {
        "ok": True,
        "id": FAILED,
        "status": "pending",
        "message": "replayed: back to pending (was failed)",
    }
    [(_, (ids, criteria, reason))] = fake.changes()
    assert ids == (FAILED,)
    assert criteria == ReplayCriteria(job_ids=(FAILED,))  # never forced, never cancelled jobs
    assert reason == "image-worker dashboard, from 127.0.0.1"
    assert any("127.0.0.1 replay job " + FAILED in line for line in capture_logs)
    assert not any(TOKEN in line for line in capture_logs)


async def test_replay_says_why_a_job_is_not_replayable(
    armed: TestClient, fake: FakeQueries
) -> None:
    answers = {}
    for job_id in (LIVE, CANCELLED, str(uuid.uuid4())):
        response = await armed.post(f"/api/jobs/{job_id}/replay", headers=bearer())
        answers[job_id] = (response.status, (await response.json())["message"])
    assert answers[LIVE][0] == 409 and "lease" in answers[LIVE][1]
    assert answers[CANCELLED][0] == 409 and "cancelled" in answers[CANCELLED][1]
    assert [a for a in answers.values() if a[0] == 404] == [(404, "no such job")]
    assert fake.changes() == []


async def test_cancel_answers(armed: TestClient, fake: FakeQueries) -> None:
    running = await armed.post(f"/api/jobs/{LIVE}/cancel", headers=bearer())
    assert running.status == 200 and "cancel requested" in (await running.json())["message"]
    done = await armed.post(f"/api/jobs/{FAILED}/cancel", headers=bearer())
    assert (
        done.status == 409 and (await done.json())["message"] == "already failed: nothing to cancel"
    )
    unknown = await armed.post(f"/api/jobs/{uuid.uuid4()}/cancel", headers=bearer())
    assert unknown.status == 404
    bad = await armed.post("/api/jobs/not-a-uuid/cancel", headers=bearer())
    assert bad.status == 400


async def test_actions_are_posts_only(armed: TestClient, fake: FakeQueries) -> None:
    assert (await armed.get(f"/api/jobs/{FAILED}/replay", headers=bearer())).status == 405
    assert (await armed.post(f"/api/jobs/{FAILED}/delete", headers=bearer())).status == 404
    assert fake.changes() == []


def test_a_short_dashboard_token_is_refused_without_repeating_it() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(dashboard_token="short-secret")
    [error] = caught.value.errors()
    assert error["loc"] == ("dashboard_token",)
    assert "16 characters" in error["msg"] and "short-secret" not in error["msg"]
    assert settings(dashboard_token="  ").dashboard_token.get_secret_value() == ""
    assert TOKEN in settings(dashboard_token=TOKEN).secrets()  # redacted from logs


def test_the_command_refuses_a_short_token_in_one_line() -> None:
    env = {
        "SUPABASE_URL": "http://127.0.0.1:9",
        "SUPABASE_SERVICE_ROLE_KEY": "service-key",
        "DASHBOARD_TOKEN": "short",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "dashboard"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: DASHBOARD_TOKEN: must be at least 16 characters (e.g. the output "
        "of `openssl rand -base64 32`), or unset for a read-only dashboard"
    ]


def test_the_wheel_ships_the_page() -> None:
    from importlib import resources

    static = resources.files("worker.ops.dashboard") / "static"
    assert {p.name for p in static.iterdir()} >= {
        "index.html",
        "dashboard.js",
        "dashboard.css",
        "favicon.svg",
    }
