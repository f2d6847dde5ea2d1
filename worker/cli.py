"""The ``image-worker`` command: run, replay, status, demo."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import typer
from loguru import logger
from pydantic import ValidationError

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


EXIT_FAILURE = 1
EXIT_USAGE = 2


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
        raise typer.Exit(EXIT_USAGE) from None
    except MissingSetting as exc:
        typer.echo(f"configuration error: {exc.variable} is required", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    return settings


@app.command()
def run() -> None:
    """Run the worker until SIGTERM/SIGINT (the container's entrypoint)."""
    from worker.app import Worker
    from worker.logs import configure_logging

    settings = load_settings("generator_url", "cloudinary_url")
    configure_logging(settings)

    async def main() -> int:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if worker.stopping:
                logger.warning("second {}: exiting now", signal.Signals(signum).name)
                os._exit(EXIT_FAILURE)
            logger.info("{}: finishing in-flight jobs, then exiting", signal.Signals(signum).name)
            worker.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        return await worker.run()

    raise typer.Exit(asyncio.run(main()))


def main() -> None:
    app(prog_name="image-worker")


if __name__ == "__main__":
    sys.exit(main())
