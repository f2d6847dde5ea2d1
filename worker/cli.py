"""The ``image-worker`` command: run, replay, status, cancel, dashboard, demo."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from loguru import logger
from pydantic import ValidationError

from worker.errors import ExitCode
from worker.settings import MissingSetting, Settings, require

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turns rows in a Supabase jobs table into generated images on Cloudinary.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Turns rows in a Supabase jobs table into generated images on Cloudinary."""


def load_settings(*required: str) -> Settings:
    """Settings from the environment, or one clear line naming the variable and exit code 2."""
    try:
        settings = Settings()
        require(settings, *required)
    except ValidationError as exc:
        for error in exc.errors():
            variable = str(error["loc"][0]).upper() if error["loc"] else "settings"
            if error["type"] == "missing":
                typer.echo(f"configuration error: {variable} is required", err=True)
            else:
                message = error["msg"].removeprefix("Value error, ")
                typer.echo(f"configuration error: {variable}: {message}", err=True)
        raise typer.Exit(ExitCode.USAGE) from None
    except MissingSetting as exc:
        typer.echo(f"configuration error: {exc.variable} is required", err=True)
        raise typer.Exit(ExitCode.USAGE) from None
    return settings


@app.command()
def run() -> None:
    """Run the worker until SIGTERM/SIGINT (the container's entrypoint)."""
    from worker.engine.app import Worker
    from worker.observability.logs import configure_logging

    settings = load_settings("generator_url", "cloudinary_url")
    configure_logging(settings)

    async def main() -> int:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if worker.stopping:
                logger.warning("second {}: exiting now", signal.Signals(signum).name)
                os._exit(ExitCode.FAILURE)
            logger.info("{}: finishing in-flight jobs, then exiting", signal.Signals(signum).name)
            worker.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        return await worker.run()

    raise typer.Exit(asyncio.run(main()))


def _ops_parser(name: str) -> Callable[[str], object]:
    """An option parser from worker.ops.arguments, imported only when used (``--help`` stays
    fast), whose ValueError becomes click's usage error: one line, exit code 2."""

    def parser(value: str) -> object:
        from worker.ops import arguments

        try:
            return getattr(arguments, name)(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parser


def _operator_settings() -> Settings:
    """Settings for replay/status: only the database ones are needed."""
    from worker.observability.logs import configure_logging
    from worker.observability.redact import redact

    settings = load_settings()
    redact.add(settings.secrets())
    configure_logging(settings)
    return settings


@app.command()
def replay(
    stuck_for: Annotated[
        float | None,
        typer.Option(
            "--stuck-for",
            metavar="DURATION",
            parser=_ops_parser("parse_duration"),
            help="Also running jobs that started longer ago than this (90s, 10m, 2h, 1h30m). "
            "Running jobs whose lease expired are always included.",
        ),
    ] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Also requeue failed jobs.")] = False,
    cancelled: Annotated[
        bool,
        typer.Option(
            "--cancelled",
            help="Also requeue cancelled jobs (named ones too: a cancelled job is requeued only "
            "with this flag).",
        ),
    ] = False,
    job: Annotated[
        list[str] | None,
        typer.Option(
            "--job",
            metavar="ID",
            parser=_ops_parser("parse_job_id"),
            help="Only this job (repeatable). A named job is replayed when it is failed or "
            "running with an expired lease (or a live one, with --force).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would change; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also jobs whose lease is still live (a worker may still be running them; "
            "it will not be able to write its result).",
        ),
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option("--reason", metavar="TEXT", help="Recorded in each job's replay_reason."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Consider at most this many jobs.")
    ] = 10000,
) -> None:
    """Requeue stuck (and, with --failed or --cancelled, failed or cancelled) jobs: reset them to
    pending, attempts 0."""
    from worker.ops.replay import ReplayOptions, replay_command
    from worker.store.operations import ReplayCriteria

    settings = _operator_settings()
    criteria = ReplayCriteria(
        job_ids=tuple(dict.fromkeys(job or ())),  # type: ignore[arg-type]
        stuck_for=stuck_for,
        failed=failed,
        force=force,
        cancelled=cancelled,
    )
    options = ReplayOptions(
        criteria=criteria, dry_run=dry_run, yes=yes, reason=reason, json=json_output, limit=limit
    )
    raise typer.Exit(replay_command(settings, options))


@app.command()
def status(
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (stable keys).")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Rows per list (running, stuck, failures).")
    ] = 20,
) -> None:
    """Queue overview: counts by status, oldest pending age, running and stuck jobs, failures."""
    from worker.ops.status import status_command

    settings = _operator_settings()
    raise typer.Exit(status_command(settings, as_json=json_output, list_limit=limit))


@app.command()
def cancel(
    job: Annotated[
        str,
        typer.Option(
            "--job",
            metavar="ID",
            parser=_ops_parser("parse_job_id"),
            help="The job to cancel.",
        ),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Cancel a job: pending ends cancelled at once; running is stopped by its worker, which
    marks it cancelled; a finished job is left as it is."""
    from worker.ops.cancel import cancel_command

    settings = _operator_settings()
    raise typer.Exit(cancel_command(settings, job, as_json=json_output))


@app.command()
def dashboard(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. The default keeps the page to this machine; any other "
            "address makes it reachable from others (put TLS and your own login in front).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 8090,
) -> None:
    """The operators' live web page: counts, throughput, running, stuck and failed jobs. Needs
    only SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY; read-only unless DASHBOARD_TOKEN is set,
    which enables its replay and cancel buttons for requests that carry it."""
    from worker.ops.dashboard.command import dashboard_command

    settings = _operator_settings()
    raise typer.Exit(dashboard_command(settings, host, port))


@app.command()
def demo(
    jobs: Annotated[
        int, typer.Option("--jobs", min=2, max=500, help="How many sample jobs to run.")
    ] = 12,
    report: Annotated[
        Path,
        typer.Option(
            "--report",
            metavar="PATH",
            help="The HTML report (gallery and timeline); its directory also gets worker.log.",
        ),
    ] = Path("demo-report/index.html"),
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running",
            help="After the summary, keep the stack and the worker up (and print the env for "
            "`status` and `replay` in another terminal, and the URL of the operators' dashboard) "
            "until Ctrl-C.",
        ),
    ] = False,
) -> None:
    """The whole pipeline on an embedded local stack, no credentials needed: start here."""
    # The demo lives in the devstack, a dev dependency: the runtime image does not have it.
    try:
        import devstack.demo as demo_module
    except ModuleNotFoundError as exc:
        # Only the demo itself missing (no devstack; or, from a clone synced without the dev
        # group, devstack/ seen as an empty namespace package). A module missing *inside* the
        # devstack is a broken environment and must show as itself.
        if exc.name not in ("devstack", "devstack.demo"):
            raise
        typer.echo(
            "image-worker demo needs a clone of the image-worker repository with its dev "
            "dependencies: in the clone, run `uv run image-worker demo`",
            err=True,
        )
        raise typer.Exit(ExitCode.USAGE) from None

    options = demo_module.DemoOptions(jobs=jobs, report=report, keep_running=keep_running)
    raise typer.Exit(demo_module.run(options))


def main() -> None:
    app(prog_name="image-worker")


if __name__ == "__main__":
    sys.exit(main())
