"""How the operator commands print: rich tables for people, JSON with stable keys for scripts."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker.observability.redact import redact
from worker.settings import Settings
from worker.store import StoreError, functions
from worker.store.operations import Candidate, Replayed
from worker.text import escape_controls, printable

if TYPE_CHECKING:
    from worker.ops.replay import ReplayOptions, ReplayPlan


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


def describe_store_error(settings: Settings, exc: StoreError) -> str:
    """One line for the operator: what failed, and the likely fix when we can tell."""
    detail = escape_controls(redact(exc.detail))
    missing = "PGRST202" in detail or "Could not find the function" in detail
    if missing and ("cancel" in detail or "cancelled" in detail):
        return (
            f"error: the database has no image-worker cancel functions; apply "
            f"{functions.TENANCY_MIGRATION} ({detail})"
        )
    if missing:
        return (
            f"error: the database has no image-worker operations functions; apply {functions.OPERATIONS_MIGRATION} "
            f"({detail})"
        )
    return f"error: cannot reach the database at {settings.supabase_url}: {detail}"


def report_plan(out: Console, plan: ReplayPlan, options: ReplayOptions, truncated: bool) -> None:
    if not options.json:  # JSON escapes control characters itself
        plan = printable(plan)
    if options.json:
        print_json(
            {
                "dry_run": options.dry_run,
                "would_replay": [asdict(c) for c in plan.replay],
                "replayed": [],
                "skipped": skipped_json(plan),
                "not_found": plan.not_found,
                "truncated": truncated,
            }
        )
        return
    if plan.replay:
        table = job_table(f"Jobs to replay ({len(plan.replay)})", plan.replay)
        out.print(table)
    print_skipped(out, plan)
    if not plan.replay:
        out.print("No jobs to replay.")
    elif options.dry_run:
        out.print(f"Dry run: nothing changed; {len(plan.replay)} job(s) would be replayed.")
    if truncated:
        out.print(f"Only the first {options.limit} matching jobs were considered.")


def report_replayed(
    out: Console,
    plan: ReplayPlan,
    replayed: list[Replayed],
    options: ReplayOptions,
    truncated: bool,
) -> None:
    if not options.json:  # JSON escapes control characters itself
        plan, replayed = printable(plan), printable(replayed)
    order = {c.id: i for i, c in enumerate(plan.replay)}
    replayed = sorted(replayed, key=lambda r: order.get(r.id, len(order)))  # as listed
    done = {r.id for r in replayed}
    # Listed as replayable but left alone by the guarded UPDATE: completed, claimed or already
    # replayed by someone else in between.
    meanwhile = [c for c in plan.replay if c.id not in done]
    if options.json:
        print_json(
            {
                "dry_run": False,
                "would_replay": [],
                "replayed": [asdict(r) for r in replayed],
                "skipped": skipped_json(plan)
                + [
                    {"id": c.id, "status": c.status, "reason": "changed meanwhile"}
                    for c in meanwhile
                ],
                "not_found": plan.not_found,
                "truncated": truncated,
            }
        )
        return
    print_skipped(out, plan)
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


def skipped_json(plan: ReplayPlan) -> list[dict[str, Any]]:
    return [{"id": c.id, "status": c.status, "reason": why} for c, why in plan.skipped]


def print_skipped(out: Console, plan: ReplayPlan) -> None:
    plan = printable(plan)
    for c, why in plan.skipped:
        out.print(f"skipped {c.id} ({c.status}): {why}", markup=False)
    for job_id in plan.not_found:
        out.print(f"skipped {job_id}: no such job", markup=False)


def job_table(title: str, jobs: list[Candidate]) -> Table:
    jobs = printable(jobs)
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


def print_status(out: Console, report: dict[str, Any]) -> None:
    # Rows hold other programs' words (error messages quoting remote services, worker ids):
    # shown with their control characters escaped, never obeyed by the terminal.
    report = printable(report)
    counts = report["counts"]
    summary = Table(title=f"Jobs in public.{report['table']}", title_justify="left")
    for name in ("pending", "running", "complete", "failed", "cancelled", "total"):
        summary.add_column(name, justify="right")
    pending = f"{counts['pending']}"
    if report.get("pending_delayed"):
        pending += f" ({report['pending_delayed']} delayed)"
    summary.add_row(
        pending,
        *(str(counts[k]) for k in ("running", "complete", "failed", "cancelled", "total")),
    )
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
            if r.get("cancel_requested"):
                lease += ", cancel requested"
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


def print_json(document: dict[str, Any]) -> None:
    # Plain print, not rich: rich may wrap long strings, which would break the JSON.
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def consoles() -> tuple[Console, Console]:
    # Piped output keeps whole UUIDs on one line instead of squeezing tables to 80 columns.
    width = None if sys.stdout.isatty() else 200
    return Console(width=width, highlight=False), Console(stderr=True, width=width, highlight=False)
