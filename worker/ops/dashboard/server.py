"""The dashboard's web application: one page, its JSON, and two actions.

    GET  /                          the page (static HTML; its script fills it in)
    GET  /static/<file>             the script, the stylesheet, the icon
    GET  /api/overview              everything the page shows, as JSON (``image_worker_dashboard``)
    POST /api/jobs/<id>/replay      requeue one stuck or failed job   } only with DASHBOARD_TOKEN
    POST /api/jobs/<id>/cancel      cancel one pending or running job } set, and the token sent

Security, in the order a request meets it:

- Every response carries a strict ``Content-Security-Policy`` (scripts and styles from this
  origin only: no inline script, so a value that slipped through as markup still could not
  run), ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``, ``nosniff``, ``no-store``.
- Bound to a loopback address, the server answers only requests addressed to a loopback name
  (``Host``): a DNS-rebinding page cannot read the queue through the operator's browser.
- An action is refused (403) when the browser says it comes from another site
  (``Sec-Fetch-Site``) or from another origin (``Origin``); (403) when no DASHBOARD_TOKEN is set;
  (401) unless ``Authorization: Bearer <DASHBOARD_TOKEN>`` matches (constant-time compare).
  The page's script sends that header from ``sessionStorage``: there is no cookie, so a
  cross-site form or link carries no credential and CSRF has nothing to ride on.
- Every action is logged: who (the remote address), what, which job, and the outcome.

The page renders every value with ``textContent``, never as markup: job error messages are
user-influenced. They are also redacted here, as ``status --json`` does. The service-role key
stays in this process; the page never sees it.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from loguru import logger

from worker.observability.redact import redact
from worker.ops.arguments import parse_job_id
from worker.ops.render import describe_store_error
from worker.settings import Settings, is_local_host
from worker.store import StoreError, functions
from worker.store.operations import Candidate, ReplayCriteria, Replayed

REFRESH_SECONDS = 3.0
# One database read serves every tab (and every refresh) within this many seconds.
CACHE_SECONDS = 1.0
LIST_LIMIT = 20
WINDOW_SECONDS = 3600
COUNT_CAP = 10_000

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

STATIC_FILES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


class DashboardQueries(Protocol):
    """The database calls the dashboard makes (``OperatorQueries``; a fake in unit tests)."""

    async def dashboard(
        self, list_limit: int, window_seconds: int, count_cap: int
    ) -> dict[str, Any]: ...

    async def replay_candidates(self, criteria: ReplayCriteria, limit: int) -> list[Candidate]: ...

    async def replay(
        self, ids: list[str], criteria: ReplayCriteria, reason: str
    ) -> list[Replayed]: ...

    async def cancel(self, job_id: str) -> str | None: ...


def static_text(name: str) -> str:
    """One of the page's files, from inside the installed package."""
    return (resources.files("worker.ops.dashboard") / "static" / name).read_text("utf-8")


def describe_error(settings: Settings, exc: StoreError) -> str:
    detail = redact(exc.detail)
    # PostgREST's "no such function" (PGRST202), or PostgreSQL's own (42883).
    missing = ("PGRST202", "Could not find the function", "42883")
    if functions.DASHBOARD in detail and any(sign in detail for sign in missing):
        return (
            f"the database has no {functions.DASHBOARD} function: apply "
            f"{functions.DASHBOARD_MIGRATION}"
        )
    return describe_store_error(settings, exc).removeprefix("error: ")


@dataclass(frozen=True, slots=True)
class Outcome:
    """An action's answer: the HTTP status and what the page shows."""

    status: int
    body: dict[str, Any]


class Dashboard:
    def __init__(
        self,
        settings: Settings,
        queries: DashboardQueries,
        *,
        host: str = "127.0.0.1",
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._settings = settings
        self._queries = queries
        self._token = settings.dashboard_token.get_secret_value()
        # Bound to loopback: only loopback Host names are answered (DNS rebinding).
        self._loopback_only = is_local_host(host)
        self._refresh_seconds = refresh_seconds
        self._cached: dict[str, Any] | None = None
        self._cached_at = 0.0
        self._lock = asyncio.Lock()
        self._files = {name: static_text(name) for name in STATIC_FILES}
        self._index = static_text("index.html")

    @property
    def actions_enabled(self) -> bool:
        return bool(self._token)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._check_host], client_max_size=1024)
        app.on_response_prepare.append(_add_security_headers)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/overview", self._overview)
        app.router.add_post("/api/jobs/{job_id}/{action:replay|cancel}", self._action)
        return app

    # --- reading

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=self._index, content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._files:
            raise web.HTTPNotFound()
        return web.Response(
            text=self._files[name], content_type=STATIC_FILES[name], charset="utf-8"
        )

    async def _overview(self, request: web.Request) -> web.Response:
        try:
            document = await self.overview()
        except StoreError as exc:
            logger.warning("dashboard: {}", describe_error(self._settings, exc))
            return web.json_response({"error": describe_error(self._settings, exc)}, status=503)
        return web.json_response(document)

    async def overview(self) -> dict[str, Any]:
        """The page's document: the database's answer, redacted, with the page's settings.
        Shared by every request within ``CACHE_SECONDS`` (one read at a time)."""
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached_at < CACHE_SECONDS:
                return self._cached
            raw = await self._queries.dashboard(LIST_LIMIT, WINDOW_SECONDS, COUNT_CAP)
            self._cached = _normalise(raw, self.actions_enabled, self._refresh_seconds)
            self._cached_at = time.monotonic()
            return self._cached

    # --- acting

    async def _action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        raw_id = request.match_info["job_id"]
        who = request.remote or "unknown"
        refusal = self._refusal(request)
        if refusal is not None:
            logger.warning(
                "dashboard: {} {} of job {} refused ({}): {}",
                who, action, raw_id[:64], refusal.status, refusal.body["message"],
            )  # fmt: skip
            return web.json_response(refusal.body, status=refusal.status)
        try:
            job_id = parse_job_id(raw_id)
        except ValueError as exc:
            return web.json_response({"ok": False, "message": str(exc)}, status=400)
        try:
            if action == "cancel":
                outcome = await self._cancel(job_id)
            else:
                outcome = await self._replay(job_id, who)
        except StoreError as exc:
            message = describe_error(self._settings, exc)
            logger.error("dashboard: {} {} of job {} failed: {}", who, action, job_id, message)
            return web.json_response({"ok": False, "id": job_id, "message": message}, status=502)
        self._cached = None  # the next refresh shows the change
        logger.info(
            "dashboard: {} {} job {}: {} ({})",
            who, action, job_id, outcome.body["message"], outcome.status,
        )  # fmt: skip
        return web.json_response(outcome.body, status=outcome.status)

    def _refusal(self, request: web.Request) -> Outcome | None:
        """Why this action request must not run, or None. Cross-site first: a forged request is
        refused as such whatever else it carries."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return _refused(403, f"cross-site request refused (Sec-Fetch-Site: {site[:32]})")
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, request):
            return _refused(403, "request from another origin refused")
        if not self._token:
            return _refused(403, "the dashboard is read-only: DASHBOARD_TOKEN is not set")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        ):
            return _refused(401, "a valid dashboard token is required (DASHBOARD_TOKEN)")
        return None

    async def _cancel(self, job_id: str) -> Outcome:
        status = await self._queries.cancel(job_id)
        if status is None:
            return Outcome(404, {"ok": False, "id": job_id, "message": "no such job"})
        if status == "cancelled":
            message = "cancelled"
        elif status == "running":
            message = "cancel requested: the worker holding it stops it and marks it cancelled"
        else:
            message = f"already {status}: nothing to cancel"
        ok = status in ("cancelled", "running")
        return Outcome(200 if ok else 409, {"ok": ok, "id": job_id, "status": status, "message": message})  # fmt: skip

    async def _replay(self, job_id: str, who: str) -> Outcome:
        # Named, never forced, never a cancelled job: the page replays what is stuck or failed.
        # Anything else (a live lease, a cancelled job, many jobs) is the CLI's, with its flags.
        criteria = ReplayCriteria(job_ids=(job_id,))
        candidates = await self._queries.replay_candidates(criteria, 1)
        if not candidates:
            return Outcome(404, {"ok": False, "id": job_id, "message": "no such job"})
        job = candidates[0]
        why_not = _not_replayable(job)
        if why_not is not None:
            body = {"ok": False, "id": job_id, "status": job.status, "message": why_not}
            return Outcome(409, body)
        replayed = await self._queries.replay(
            [job_id], criteria, f"image-worker dashboard, from {who}"
        )
        if not replayed:
            message = "it changed meanwhile (completed, claimed or replayed): left alone"
            return Outcome(409, {"ok": False, "id": job_id, "message": message})
        old = replayed[0].old_status
        message = f"replayed: back to pending (was {old})"
        return Outcome(200, {"ok": True, "id": job_id, "status": "pending", "message": message})

    # --- every request

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._loopback_only:
            host = urlsplit(f"//{request.host}").hostname if request.host else None
            if not is_local_host(host):
                return web.json_response(
                    {"ok": False, "message": "unknown host: the dashboard answers on localhost"},
                    status=421,
                )
        return await handler(request)


def _not_replayable(job: Candidate) -> str | None:
    if job.status == "cancelled":
        return "it was cancelled: requeue it with `image-worker replay --cancelled --job ID`"
    if not job.eligible:
        return f"it is {job.status}: nothing to replay"
    if job.lease_live:
        return (
            "a worker still holds its lease: wait for it to expire, or use "
            "`image-worker replay --force --job ID`"
        )
    return None


def _refused(status: int, message: str) -> Outcome:
    return Outcome(status, {"ok": False, "message": message})


def _same_origin(origin: str, request: web.Request) -> bool:
    """``Origin`` names this server's host and port (the scheme may differ behind a TLS proxy)."""
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == (request.host or "").lower()


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="image-worker dashboard"'


def _normalise(raw: dict[str, Any], actions: bool, refresh_seconds: float) -> dict[str, Any]:
    document = dict(raw)
    for key in ("running", "stuck", "workers", "oldest_pending", "recent_failures", "throughput"):
        document[key] = document.get(key) or []
    for failure in document["recent_failures"]:
        # Rows should never hold a secret, but a screen is shared more than a terminal.
        if failure.get("error_message"):
            failure["error_message"] = redact(failure["error_message"])
    document["pickups"] = document.get("pickups") or {}
    document["counts_capped"] = document.get("counts_capped") or []
    document["actions"] = actions
    document["refresh_seconds"] = refresh_seconds
    return document
