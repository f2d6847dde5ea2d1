"""Logging with loguru: ``text`` for people, ``json`` for pipelines; secrets always redacted.

    configure_logging(settings)             # once, at start (the CLI does it)
    configure_logging(settings, sink=buf)   # tests: anything with .write(), or a callable

- Every line carries ``worker_id`` (bound by the code, else this process's WORKER_ID) and every
  line about a job its ``job_id`` (bound with ``logger.bind(job_id=…)``); a line about no job
  shows ``-`` (text) or null (json).
- The standard-library loggers of the libraries we use (realtime, httpx, websockets, supabase,
  cloudinary, aiohttp, asyncio, warnings…) are routed into the same sinks, so every line has one
  format and goes through the same redaction.
- Redaction happens in the sink, on what is about to be written, so it covers the message, the
  bound values and exception text and tracebacks alike (a library exception whose message holds
  a URL with ``apikey=`` included). ``diagnose`` is off: loguru would otherwise print the values
  of local variables in tracebacks, secrets included.
- Control characters are escaped here too (``worker.text.escape_controls``), whatever line they
  come in: a remote body quoted in a message or an exception cannot drive the terminal showing
  the logs (ESC sequences), reorder it (bidi overrides) or start a forged line of its own (CR,
  LF: a message is always one line; tracebacks keep their own line breaks).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from datetime import UTC
from typing import Any, TextIO

from loguru import logger

from worker.observability.redact import redact
from worker.settings import Settings
from worker.text import escape_controls

# Library loggers and their level at LOG_LEVEL INFO. httpx logs every request at INFO, with its
# URL (and a URL can carry an apikey): too noisy and too risky outside debugging.
LIBRARY_LEVELS = {
    "httpx": "WARNING",
    "httpcore": "WARNING",
    "hpack": "WARNING",
    "h2": "WARNING",
    "websockets": "WARNING",
    "realtime": "WARNING",
    "postgrest": "WARNING",
    "supabase": "WARNING",
    "supabase_auth": "WARNING",
    "gotrue": "WARNING",
    "storage3": "WARNING",
    "urllib3": "WARNING",
    "Cloudinary": "WARNING",
    "cloudinary": "WARNING",
    "aiohttp": "WARNING",
    "asyncio": "WARNING",
}
# At LOG_LEVEL DEBUG the libraries speak at INFO (httpx's request lines); their own DEBUG output
# (every frame, every header) is only useful when debugging the library itself.
LIBRARY_DEBUG_LEVEL = "INFO"

TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "{extra[worker_id]} {extra[job_id]} {extra[_origin]}<level>{message}</level>"
)  # loguru appends the traceback, when there is one, on the following lines


class InterceptHandler(logging.Handler):
    """loguru's documented recipe: re-emit standard-library records through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Find the caller outside the logging module, so loguru reports the library's location.
        frame, depth = logging.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.bind(logger_name=record.name).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage()
        )


def _patcher(worker_id: str) -> Callable[[dict[str, Any]], None]:
    # A process runs one worker, so its id is the default of every line, library lines and
    # modules that bind only job_id included; a value bound explicitly wins.
    def patch(record: dict[str, Any]) -> None:
        extra = record["extra"]
        extra.setdefault("worker_id", worker_id)
        extra.setdefault("job_id", "-")
        name = extra.get("logger_name")
        # Library lines say where they come from; our own lines don't need to.
        extra["_origin"] = f"[{name}] " if name else ""
        # The message is one line, and no control character in it reaches a sink.
        record["message"] = escape_controls(record["message"])

    return patch


class _Sink:
    def __init__(self, stream: TextIO | Callable[[str], object]) -> None:
        self._write = stream.write if hasattr(stream, "write") else stream
        self._flush = getattr(stream, "flush", None)

    def _emit(self, text: str) -> None:
        self._write(text)
        if self._flush is not None:
            self._flush()


class _TextSink(_Sink):
    """Writes loguru's formatted line (traceback included) after redacting all of it and
    escaping its control characters (the traceback's line breaks and our own colours kept;
    the traceback's lines indented)."""

    def __init__(self, stream: TextIO | Callable[[str], object], colours: bool = False) -> None:
        super().__init__(stream)
        self._colours = colours

    def __call__(self, message: str) -> None:
        text = escape_controls(redact(str(message)), "\n\t", keep_colours=self._colours)
        # The lines after the first (a traceback) are indented: only a record starts a line at
        # column 0, so an exception quoting a body with a line break cannot forge one.
        head, _, rest = text.rstrip("\n").partition("\n")
        if rest:
            head += "".join(f"\n  {line}" for line in rest.split("\n"))
        self._emit(head + "\n")


class _JsonSink(_Sink):
    """One JSON object per line with stable keys. Each string is redacted before encoding, not
    after: JSON escaping could hide a secret from the redactor, and a pattern matching across
    an escape could break the JSON."""

    def __call__(self, message: Any) -> None:
        record = message.record
        extra = dict(record["extra"])
        extra.pop("_origin", None)
        logger_name = extra.pop("logger_name", None) or record["name"]
        job_id = extra.pop("job_id", "-")
        worker_id = extra.pop("worker_id", "-")
        exception = None
        if record["exception"] is not None:
            exc_type, exc_value, exc_tb = record["exception"]
            exception = "".join(traceback.format_exception(exc_type, exc_value, exc_tb))
        line = {
            "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
            "level": record["level"].name,
            "message": redact(record["message"]),
            "job_id": None if job_id == "-" else _redact_value(job_id),
            "worker_id": None if worker_id == "-" else _redact_value(worker_id),
            "logger": logger_name,
            "function": record["function"],
            "line": record["line"],
            "exception": escape_controls(redact(exception), "\n\t") if exception else None,
            "extra": {k: _redact_value(v) for k, v in extra.items()},
        }
        self._emit(json.dumps(line, default=str) + "\n")


def _redact_value(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    return escape_controls(redact(str(value)))


def configure_logging(
    settings: Settings, sink: TextIO | Callable[[str], object] | None = None
) -> int:
    """Send every log line (ours and the libraries') to ``sink`` (default stderr) in the
    configured format. Returns the loguru handler id. Safe to call again: it starts over."""
    redact.add(settings.secrets())
    stream = sink if sink is not None else sys.stderr
    logger.remove()
    logger.configure(patcher=_patcher(settings.worker_id))
    if settings.log_format == "json":
        handler = logger.add(
            _JsonSink(stream),
            level=settings.log_level,
            format="{message}",
            backtrace=False,
            diagnose=False,
        )
    else:
        colorize = bool(getattr(stream, "isatty", lambda: False)())
        handler = logger.add(
            _TextSink(stream, colours=colorize),
            level=settings.log_level,
            format=TEXT_FORMAT,
            colorize=colorize,
            backtrace=False,
            diagnose=False,
        )
    _route_standard_logging(settings.log_level)
    return handler


def _route_standard_logging(level: str) -> None:
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    logging.captureWarnings(True)
    debugging = level in ("DEBUG", "TRACE")
    for name, library_level in LIBRARY_LEVELS.items():
        library = logging.getLogger(name)
        # Some libraries (Cloudinary) attach their own stderr handler; ours is the only one.
        library.handlers.clear()
        library.propagate = True
        library.setLevel(LIBRARY_DEBUG_LEVEL if debugging else library_level)
