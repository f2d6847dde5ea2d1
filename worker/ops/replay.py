"""``image-worker replay``: requeue stuck (and, with --failed or --cancelled, failed or cancelled)
jobs.

Replay first lists, then (unless ``--dry-run``) asks, then changes in batches of ``BATCH_SIZE``,
each batch one atomic statement: an interrupted replay leaves every job either replayed or
untouched, and running it again finishes the work. A job whose lease is still live is only
touched with ``--force``.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.prompt import Confirm

from worker.errors import ExitCode
from worker.ops.render import consoles, describe_store_error, report_plan, report_replayed
from worker.settings import Settings
from worker.store import StoreError
from worker.store.operations import Candidate, OperatorQueries, ReplayCriteria, Replayed

BATCH_SIZE = 100


@dataclass
class ReplayPlan:
    replay: list[Candidate] = field(default_factory=list)
    skipped: list[tuple[Candidate, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def plan_replay(candidates: list[Candidate], criteria: ReplayCriteria) -> ReplayPlan:
    plan = ReplayPlan()
    for c in candidates:
        if not c.eligible and c.status == "cancelled":
            plan.skipped.append((c, "it was cancelled: use --cancelled to requeue it"))
        elif not c.eligible:
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
    out, err = consoles()
    store = OperatorQueries(settings)
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
                return ExitCode.FAILURE
            plan = plan_replay(candidates, criteria)
            truncated = len(candidates) >= options.limit

            if not plan.replay or options.dry_run:
                report_plan(out, plan, options, truncated)
                return ExitCode.OK
            if not options.yes:
                if options.json or not sys.stdin.isatty():
                    why = "with --json" if options.json else "stdin is not a terminal"
                    err.print(
                        f"refusing to replay {len(plan.replay)} job(s) without confirmation "
                        f"({why}): pass --yes, or --dry-run to only list them",
                        markup=False,
                    )
                    return ExitCode.USAGE
                report_plan(out, plan, options, truncated)
                if not Confirm.ask(
                    f"Reset these {len(plan.replay)} job(s) to pending?", console=err, default=False
                ):
                    err.print("aborted: nothing changed")
                    return ExitCode.FAILURE

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
                report_replayed(out, plan, replayed, options, truncated)
                return ExitCode.FAILURE
            report_replayed(out, plan, replayed, options, truncated)
            return ExitCode.OK
        finally:
            runner.run(store.close())


def _in_batches(
    runner: asyncio.Runner,
    store: OperatorQueries,
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
