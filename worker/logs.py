"""Logging with loguru: ``text`` for people, ``json`` for pipelines; secrets always redacted."""

from __future__ import annotations

import sys

from loguru import logger

from worker.redact import redact
from worker.settings import Settings

TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "{extra[worker_id]} {extra[job_id]} <level>{message}</level>"
)


def _patch(record) -> None:
    record["extra"].setdefault("worker_id", "-")
    record["extra"].setdefault("job_id", "-")
    record["message"] = redact(record["message"])


def configure_logging(settings: Settings, sink=sys.stderr) -> None:
    logger.remove()
    logger.configure(patcher=_patch)
    if settings.log_format == "json":
        logger.add(sink, level=settings.log_level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sink, level=settings.log_level, format=TEXT_FORMAT, backtrace=False, diagnose=False
        )
