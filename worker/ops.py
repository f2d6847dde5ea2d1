"""The operator commands ``image-worker replay`` and ``image-worker status``.

Both talk to the database only through SQL functions of
``supabase/migrations/20261122000100_image_worker_operations.sql`` (via supabase-py and
``/rest/v1/rpc``, with the same per-call deadline as the worker), so the rules live in one place:

- which jobs replay may touch is decided in SQL, and decided again inside the UPDATE itself, so a
  job that completes between the listing and the change is left alone; a job whose lease is still
  live is only touched with ``--force``;
- ages are computed on the database's clock, not the operator's.

Replay first lists, then (unless ``--dry-run``) asks, then changes in batches of ``BATCH_SIZE``,
each batch one atomic statement: an interrupted replay leaves every job either replayed or
untouched, and running it again finishes the work.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import socket
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.prompt import Confirm
from rich.table import Table
from rich.text import Text

from worker.redact import redact
from worker.settings import Settings
from worker.store import Store, StoreError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

BATCH_SIZE = 100
MIGRATION = "supabase/migrations/20261122000100_image_worker_operations.sql"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or plain seconds → seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        compact = text.replace(" ", "")
        parts = list(_DURATION_PART.finditer(compact))
        if not parts or "".join(p.group(0) for p in parts) != compact:
            raise ValueError(
                f"{text!r} is not a duration (examples: 90s, 10m, 2h, 1h30m)"
            ) from None
        seconds = sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2).lower()] for p in parts)
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    return seconds


def parse_job_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not a job id (a UUID)") from None


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    negative, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        text = f"{seconds:.0f}s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)}m {int(seconds % 60)}s"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"
    else:
        text = f"{int(seconds // 86400)}d {int(seconds % 86400 // 3600)}h"
    return f"-{text}" if negative else text


# --- the database side ---


@dataclass(frozen=True, slots=True)
class Candidate:
    """A job replay looked at, as it was when listed."""

    id: str
    status: str
    attempts: int
    worker_id: str | None
    error_message: str | None
    age_seconds: float | None
    lease_seconds_left: float | None
    lease_live: bool
    eligible: bool  # replayable, given --force where the lease is live


@dataclass(frozen=True, slots=True)
class Replayed:
    id: str
    old_status: str
    attempts: int
    worker_id: str | None
    age_seconds: float | None


@dataclass(frozen=True, slots=True)
class ReplayCriteria:
    job_ids: tuple[str, ...] = ()
    stuck_for: float | None = None
    failed: bool = False
    force: bool = False

    @property
    def named(self) -> bool:
        return bool(self.job_ids)


class OpsStore(Store):
    """The operator functions, on top of the worker's store (same client, deadlines, errors)."""

    async def replay_candidates(self, criteria: ReplayCriteria, limit: int) -> list[Candidate]:
        rows = await self._rpc(
            "replay_candidates",
            "image_worker_replay_candidates",
            {
                "p_ids": list(criteria.job_ids) or None,
                "p_stuck_seconds": criteria.stuck_for,
                "p_failed": criteria.failed,
                "p_limit": limit,
            },
        )
        return [
            Candidate(
                id=str(r["id"]),
                status=r["status"],
                attempts=int(r["attempts"]),
                worker_id=r.get("worker_id"),
                error_message=r.get("error_message"),
                age_seconds=r.get("age_seconds"),
                lease_seconds_left=r.get("lease_seconds_left"),
                lease_live=bool(r.get("lease_live")),
                eligible=bool(r.get("eligible")),
            )
            for r in rows or []
        ]

    async def replay(
        self, ids: Sequence[str], criteria: ReplayCriteria, reason: str
    ) -> list[Replayed]:
        rows = await self._rpc(
            "replay",
            "image_worker_replay",
            {
                "p_ids": list(ids),
                "p_named": criteria.named,
                "p_stuck_seconds": criteria.stuck_for,
                "p_failed": criteria.failed,
                "p_force": criteria.force,
                "p_reason": reason,
            },
        )
        return [
            Replayed(
                id=str(r["id"]),
                old_status=r["old_status"],
                attempts=int(r["attempts"]),
                worker_id=r.get("worker_id"),
                age_seconds=r.get("age_seconds"),
            )
            for r in rows or []
        ]

    async def status(self, list_limit: int) -> dict[str, Any]:
        return await self._rpc("status", "image_worker_status", {"p_list_limit": list_limit})


def describe_store_error(settings: Settings, exc: StoreError) -> str:
    """One line for the operator: what failed, and the likely fix when we can tell."""
    detail = redact(exc.detail)
    if "PGRST202" in detail or "Could not find the function" in detail:
        return (
            f"error: the database has no image-worker operations functions; apply {MIGRATION} "
            f"({detail})"
        )
    return f"error: cannot reach the database at {settings.supabase_url}: {detail}"


# --- replay ---


@dataclass
class ReplayPlan:
    replay: list[Candidate] = field(default_factory=list)
    skipped: list[tuple[Candidate, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def plan_replay(candidates: list[Candidate], criteria: ReplayCriteria) -> ReplayPlan:
    plan = ReplayPlan()
    for c in candidates:
        if not c.eligible:
            plan.skipped.append((c, f"status is {c.status}: nothing to replay"))
        elif c.lease_live and not criteria.force:
            plan.skipped.append((c, "its lease is still live (a worker holds it): use --force"))
        else:
            plan.replay.append(c)
    found = {c.id for c in candidates}
    plan.not_found = [i for i in criteria.job_ids if i not in found]
    return plan


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    criteria: ReplayCriteria
    dry_run: bool = False
    yes: bool = False
    reason: str | None = None
    json: bool = False
    limit: int = 10000


def default_reason() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"image-worker replay by {user}@{socket.gethostname()}"


def replay_command(settings: Settings, options: ReplayOptions) -> int:
    """``image-worker replay``: returns the exit code."""
    out, err = _consoles()
    store = OpsStore(settings)
    criteria = options.criteria
    reason = options.reason or default_reason()
    # One event loop for the whole command, with the confirmation prompt between its phases:
    # the prompt blocks on stdin, which must not happen inside a running coroutine.
    with asyncio.Runner() as runner:
        runner.run(store.open())
        try:
            try:
                candidates = runner.run(store.replay_candidates(criteria, options.limit))
            except StoreError as exc:
                err.print(describe_store_error(settings, exc), markup=False)
                return EXIT_FAILURE
            plan = plan_replay(candidates, criteria)
            truncated = len(candidates) >= options.limit

            if not plan.replay or options.dry_run:
                _report_plan(out, plan, options, truncated)
                return EXIT_OK
            if not options.yes:
                if options.json or not sys.stdin.isatty():
                    why = "with --json" if options.json else "stdin is not a terminal"
                    err.print(
                        f"refusing to replay {len(plan.replay)} job(s) without confirmation "
                        f"({why}): pass --yes, or --dry-run to only list them",
                        markup=False,
                    )
                    return EXIT_USAGE
                _report_plan(out, plan, options, truncated)
                if not Confirm.ask(
                    f"Reset these {len(plan.replay)} job(s) to pending?", console=err, default=False
                ):
                    err.print("aborted: nothing changed")
                    return EXIT_FAILURE

            replayed: list[Replayed] = []
            try:
                for batch_result in _in_batches(
                    runner, store, plan, criteria, reason, options, err
                ):
                    replayed.extend(batch_result)
            except StoreError as exc:
                err.print(describe_store_error(settings, exc), markup=False)
                err.print(
                    f"{len(replayed)} job(s) were replayed before the error; "
                    "run the same command again to finish",
                    markup=False,
                )
                _report_replayed(out, plan, replayed, options, truncated)
                return EXIT_FAILURE
            _report_replayed(out, plan, replayed, options, truncated)
            return EXIT_OK
        finally:
            runner.run(store.close())


def _in_batches(
    runner: asyncio.Runner,
    store: OpsStore,
    plan: ReplayPlan,
    criteria: ReplayCriteria,
    reason: str,
    options: ReplayOptions,
    err: Console,
) -> Iterator[list[Replayed]]:
    ids = [c.id for c in plan.replay]
    batches = [ids[i : i + BATCH_SIZE] for i in range(0, len(ids), BATCH_SIZE)]
    if len(batches) <= 1 or options.json:
        for batch in batches:
            yield runner.run(store.replay(batch, criteria, reason))
        return
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("replay", total=len(ids))
        for batch in batches:
            yield runner.run(store.replay(batch, criteria, reason))
            progress.advance(task, len(batch))


def _report_plan(out: Console, plan: ReplayPlan, options: ReplayOptions, truncated: bool) -> None:
    if options.json:
        _print_json(
            {
                "dry_run": options.dry_run,
                "would_replay": [asdict(c) for c in plan.replay],
                "replayed": [],
                "skipped": _skipped_json(plan),
                "not_found": plan.not_found,
                "truncated": truncated,
            }
        )
        return
    if plan.replay:
        table = _job_table(f"Jobs to replay ({len(plan.replay)})", plan.replay)
        out.print(table)
    _print_skipped(out, plan)
    if not plan.replay:
        out.print("No jobs to replay.")
    elif options.dry_run:
        out.print(f"Dry run: nothing changed; {len(plan.replay)} job(s) would be replayed.")
    if truncated:
        out.print(f"Only the first {options.limit} matching jobs were considered.")


def _report_replayed(
    out: Console,
    plan: ReplayPlan,
    replayed: list[Replayed],
    options: ReplayOptions,
    truncated: bool,
) -> None:
    order = {c.id: i for i, c in enumerate(plan.replay)}
    replayed = sorted(replayed, key=lambda r: order.get(r.id, len(order)))  # as listed
    done = {r.id for r in replayed}
    # Listed as replayable but left alone by the guarded UPDATE: completed, claimed or already
    # replayed by someone else in between.
    meanwhile = [c for c in plan.replay if c.id not in done]
    if options.json:
        _print_json(
            {
                "dry_run": False,
                "would_replay": [],
                "replayed": [asdict(r) for r in replayed],
                "skipped": _skipped_json(plan)
                + [
                    {"id": c.id, "status": c.status, "reason": "changed meanwhile"}
                    for c in meanwhile
                ],
                "not_found": plan.not_found,
                "truncated": truncated,
            }
        )
        return
    _print_skipped(out, plan)
    if replayed:
        table = Table(title=f"Replayed {len(replayed)} job(s) to pending", title_justify="left")
        table.add_column("id", no_wrap=True, min_width=36)
        table.add_column("old status")
        table.add_column("attempts", justify="right")
        table.add_column("age", justify="right")
        table.add_column("last worker")
        for r in replayed:
            table.add_row(
                r.id,
                r.old_status,
                str(r.attempts),
                format_age(r.age_seconds),
                Text(r.worker_id or "-"),
            )
        out.print(table)
    if meanwhile:
        out.print(f"{len(meanwhile)} job(s) changed meanwhile and were left alone.")
    out.print(f"Replayed {len(replayed)} job(s).")
    if truncated:
        out.print(f"Only the first {options.limit} matching jobs were considered; run again.")


def _skipped_json(plan: ReplayPlan) -> list[dict[str, Any]]:
    return [{"id": c.id, "status": c.status, "reason": why} for c, why in plan.skipped]


def _print_skipped(out: Console, plan: ReplayPlan) -> None:
    for c, why in plan.skipped:
        out.print(f"skipped {c.id} ({c.status}): {why}", markup=False)
    for job_id in plan.not_found:
        out.print(f"skipped {job_id}: no such job", markup=False)


def _job_table(title: str, jobs: list[Candidate]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("age", justify="right")
    table.add_column("worker")
    table.add_column("lease")
    for c in jobs:
        if c.status != "running":
            lease = "-"
        elif c.lease_seconds_left is None:
            lease = "none"
        elif c.lease_live:
            lease = f"live, {format_age(c.lease_seconds_left)} left"
        else:
            lease = f"expired {format_age(-c.lease_seconds_left)} ago"
        table.add_row(
            c.id,
            c.status,
            str(c.attempts),
            format_age(c.age_seconds),
            Text(c.worker_id or "-"),
            lease,
        )
    return table


# --- status ---


def status_command(settings: Settings, *, as_json: bool, list_limit: int) -> int:
    """``image-worker status``: returns the exit code."""
    out, err = _consoles()
    store = OpsStore(settings)

    async def fetch() -> dict[str, Any]:
        await store.open()
        try:
            return await store.status(list_limit)
        finally:
            await store.close()

    try:
        report = asyncio.run(fetch())
    except StoreError as exc:
        err.print(describe_store_error(settings, exc), markup=False)
        return EXIT_FAILURE
    report = _normalise_status(settings, report)
    if as_json:
        _print_json(report)
    else:
        _print_status(out, report)
    return EXIT_OK


# The keys of `status --json`, in this order; scripts rely on them (see the README, "Stuck and failed jobs").
STATUS_KEYS = (
    "table",
    "counts",
    "pending_delayed",
    "oldest_pending_age_seconds",
    "stuck_count",
    "running",
    "stuck",
    "recent_failures",
)


def _normalise_status(settings: Settings, raw: dict[str, Any]) -> dict[str, Any]:
    report = {key: raw.get(key) for key in STATUS_KEYS}
    report["table"] = settings.jobs_table
    report["counts"] = {
        k: int((raw.get("counts") or {}).get(k, 0))
        for k in ("pending", "running", "complete", "failed", "total")
    }
    for key in ("running", "stuck", "recent_failures"):
        report[key] = report[key] or []
    for failure in report["recent_failures"]:
        # Rows should never hold a secret, but this output is pasted into tickets and chats.
        if failure.get("error_message"):
            failure["error_message"] = redact(failure["error_message"])
    return report


def _print_status(out: Console, report: dict[str, Any]) -> None:
    counts = report["counts"]
    summary = Table(title=f"Jobs in public.{report['table']}", title_justify="left")
    for name in ("pending", "running", "complete", "failed", "total"):
        summary.add_column(name, justify="right")
    pending = f"{counts['pending']}"
    if report.get("pending_delayed"):
        pending += f" ({report['pending_delayed']} delayed)"
    summary.add_row(pending, *(str(counts[k]) for k in ("running", "complete", "failed", "total")))
    out.print(summary)
    out.print(f"oldest pending: {format_age(report.get('oldest_pending_age_seconds'))} waiting")
    stuck_count = report.get("stuck_count", 0)
    out.print(
        f"stuck (running, lease expired): {stuck_count}"
        + ("  → image-worker replay --dry-run" if stuck_count else "")
    )

    if report["running"]:
        table = Table(title=f"Running ({counts['running']})", title_justify="left")
        for column in ("id", "worker", "progress", "attempts", "running for", "lease"):
            table.add_column(column, no_wrap=column == "id", min_width=36 if column == "id" else 0)
        for r in report["running"]:
            left = r.get("lease_seconds_left")
            if left is None:
                lease = "none"
            elif left >= 0:
                lease = f"{format_age(left)} left"
            else:
                lease = f"expired {format_age(-left)} ago"
            table.add_row(
                r["id"],
                Text(r.get("worker_id") or "-"),
                f"{r.get('progress', 0)}%",
                str(r.get("attempts", 0)),
                format_age(r.get("running_seconds")),
                lease,
            )
        out.print(table)
    if report["stuck"]:
        table = Table(title=f"Stuck ({stuck_count})", title_justify="left")
        for column in ("id", "last worker", "progress", "attempts", "lease expired"):
            table.add_column(column, no_wrap=column == "id", min_width=36 if column == "id" else 0)
        for r in report["stuck"]:
            table.add_row(
                r["id"],
                Text(r.get("worker_id") or "-"),
                f"{r.get('progress', 0)}%",
                str(r.get("attempts", 0)),
                f"{format_age(r.get('lease_expired_seconds'))} ago",
            )
        out.print(table)
    if report["recent_failures"]:
        table = Table(title="Recent failures", title_justify="left")
        for column in ("id", "failed", "attempts", "error"):
            table.add_column(column, no_wrap=column == "id", min_width=36 if column == "id" else 0)
        for r in report["recent_failures"]:
            table.add_row(
                r["id"],
                f"{format_age(r.get('failed_seconds_ago'))} ago",
                str(r.get("attempts", 0)),
                Text(r.get("error_message") or ""),
            )
        out.print(table)


def _print_json(document: dict[str, Any]) -> None:
    # Plain print, not rich: rich may wrap long strings, which would break the JSON.
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def _consoles() -> tuple[Console, Console]:
    # Piped output keeps whole UUIDs on one line instead of squeezing tables to 80 columns.
    width = None if sys.stdout.isatty() else 200
    return Console(width=width, highlight=False), Console(stderr=True, width=width, highlight=False)
