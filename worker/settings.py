"""Every setting of the worker, read from the environment (and ``.env``), validated once at start."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from enum import StrEnum
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")

# The jobs table, in schema public: fixed, the SQL functions of the migrations name it.
JOBS_TABLE = "jobs"
# The longest duration any setting takes (a day): past it, a value is a typo, not a choice.
MAX_SECONDS = 86400
# DASHBOARD_TOKEN's shortest length: long enough that guessing it over HTTP is hopeless.
DASHBOARD_TOKEN_MIN_CHARS = 16


def is_local_host(host: str | None) -> bool:
    """Whether ``host`` is this machine: ``localhost`` (and ``*.localhost``) or a loopback
    address. Traffic to it never leaves the host, so plain http is not clear text on a wire."""
    host = (host or "").strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse_plain_http(url: str, info: ValidationInfo, carries: str, what: str = "") -> None:
    """Plain http to another host carries ``carries`` in clear text: refused unless
    ALLOW_INSECURE_HTTP=true (a private network the operator trusts)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return  # not a URL: the caller's own checks say so
    if (
        parts.scheme.lower() != "http"
        or is_local_host(host)
        or info.data.get("allow_insecure_http")
    ):
        return
    subject = f"{what} " if what else ""
    raise ValueError(
        f"{subject}uses plain http to {host}, which would send {carries} in clear text: use "
        "https, or set ALLOW_INSECURE_HTTP=true for a private network you trust"
    )


class WorkerMode(StrEnum):
    REALTIME = "realtime"
    POLLING = "polling"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class GeneratorKind(StrEnum):
    """Who generates the images (contract v2, ``GENERATOR_KIND``): worker/pipeline/generators/."""

    HTTP = "http"  # the generic protocol: Modal web endpoints, your own server
    REPLICATE = "replicate"
    OPENAI = "openai"
    FAL = "fal"


# Per kind: GENERATOR_URL when unset (the provider's public API; the generic kind has none) and
# GENERATOR_DEFAULT_MODEL when unset (the model of a job that names none).
GENERATOR_DEFAULTS: dict[GeneratorKind, tuple[str | None, str | None]] = {
    GeneratorKind.HTTP: (None, None),
    GeneratorKind.REPLICATE: ("https://api.replicate.com", "black-forest-labs/flux-schnell"),
    GeneratorKind.OPENAI: ("https://api.openai.com/v1", "gpt-image-1"),
    GeneratorKind.FAL: ("https://queue.fal.run", "fal-ai/flux/schnell"),
}


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Names and defaults are part of the public contract: do not rename."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # nan and inf are never a duration or a size: nan sleeps forever, inf breaks JSON.
        allow_inf_nan=False,
    )

    # Declared first: the URL validators below read it. Plain http to a host other than this
    # one sends keys in clear text; loopback needs no opt-in (local stacks).
    allow_insecure_http: bool = False
    supabase_url: str
    supabase_service_role_key: SecretStr
    worker_mode: WorkerMode = WorkerMode.REALTIME
    worker_poll_interval_seconds: float = Field(5.0, gt=0, le=3600)
    worker_concurrency: int = Field(4, ge=1, le=1024)
    worker_id: str = Field(default_factory=_default_worker_id, min_length=1, max_length=200)
    worker_lease_seconds: float = Field(60.0, ge=3, le=MAX_SECONDS)
    worker_shutdown_grace_seconds: float = Field(30.0, ge=0, le=MAX_SECONDS)
    job_max_attempts: int = Field(3, ge=1, le=1000)
    # Retired in contract v2: the table is public.jobs and the SQL is static. Kept so that
    # JOBS_TABLE=jobs (older deploy files) still starts; any other value is refused.
    jobs_table: str = JOBS_TABLE

    generator_kind: GeneratorKind = GeneratorKind.HTTP
    generator_url: str | None = None
    generator_token: SecretStr = SecretStr("")
    generator_default_model: str | None = None
    generator_timeout_seconds: float = Field(300.0, gt=0, le=MAX_SECONDS)
    generator_retry_delays: Annotated[tuple[float, ...], NoDecode] = (10.0, 20.0, 30.0)

    cloudinary_url: SecretStr | None = None
    cloudinary_folder: str = "generations"
    thumbnail_size: int = Field(256, ge=16, le=4096)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, le=1 << 30)
    max_prompt_chars: int = Field(4000, ge=1, le=1_000_000)
    allow_insecure_downloads: bool = False

    health_port: int = Field(8080, ge=0, le=65535)
    # 0.0.0.0 for containers (the orchestrator probes from outside); 127.0.0.1 keeps it local.
    health_host: str = "0.0.0.0"
    # /readyz shows the text of database and claim errors (it may name hosts): off by default.
    health_error_details: bool = False
    # `image-worker dashboard`: its replay and cancel buttons work only for a request that
    # carries this token; empty (the default) = the page is read-only. Never logged.
    dashboard_token: SecretStr = SecretStr("")
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT

    @field_validator("supabase_url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        _refuse_plain_http(value, info, "the service-role key")
        return value

    @field_validator("jobs_table")
    @classmethod
    def _check_jobs_table(cls, value: str) -> str:
        if value != JOBS_TABLE:
            raise ValueError(
                f"is retired: the worker uses public.{JOBS_TABLE}; "
                f"unset it or set it to {JOBS_TABLE}"
            )
        return value

    @field_validator("generator_url")
    @classmethod
    def _check_generator_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        _refuse_plain_http(value, info, "the generator token and prompts")
        return value

    @field_validator("generator_default_model")
    @classmethod
    def _blank_model_is_none(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    @model_validator(mode="after")
    def _generator_defaults(self) -> Settings:
        """A hosted provider's URL and model default to its public API and a model it serves."""
        url, model = GENERATOR_DEFAULTS[self.generator_kind]
        if self.generator_url is None:
            self.generator_url = url
        if self.generator_default_model is None:
            self.generator_default_model = model
        return self

    @field_validator("generator_retry_delays", mode="before")
    @classmethod
    def _parse_delays(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                delays = tuple(float(p) for p in parts)
            except ValueError:
                raise ValueError("must be comma-separated seconds, e.g. 10,20,30") from None
            if any(d < 0 for d in delays):
                raise ValueError("delays cannot be negative")
            if not all(math.isfinite(d) and d <= MAX_SECONDS for d in delays):
                raise ValueError(f"each delay must be a number of seconds up to {MAX_SECONDS}")
            if len(delays) > 100:
                raise ValueError("at most 100 delays")
            return delays
        return value

    @field_validator("cloudinary_url")
    @classmethod
    def _check_cloudinary_url(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        if not url.startswith("cloudinary://"):
            raise ValueError("must look like cloudinary://KEY:SECRET@CLOUD")
        # Checked here, as the uploader reads it, so that a missing part is this one line at
        # start and not a traceback at the first upload. Messages never repeat the value.
        try:
            parts = urlsplit(url)
            key, secret, cloud = parts.username, parts.password, parts.hostname
            options = dict(parse_qsl(parts.query))
        except ValueError:
            raise ValueError("must look like cloudinary://KEY:SECRET@CLOUD") from None
        for part, missing in ((key, "API key"), (secret, "API secret"), (cloud, "cloud name")):
            if not part:
                raise ValueError(
                    f"has no {missing}: it must look like cloudinary://KEY:SECRET@CLOUD"
                )
        if prefix := options.get("upload_prefix"):
            _refuse_plain_http(prefix, info, "the API key and signed uploads", what="upload_prefix")
        return value

    @field_validator("dashboard_token")
    @classmethod
    def _check_dashboard_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        if token and len(token) < DASHBOARD_TOKEN_MIN_CHARS:
            # Never repeats the value. A short token can be guessed by anyone who can reach
            # the page.
            raise ValueError(
                f"must be at least {DASHBOARD_TOKEN_MIN_CHARS} characters (e.g. the output of "
                "`openssl rand -base64 32`), or unset for a read-only dashboard"
            )
        return SecretStr(token)

    @field_validator("health_host")
    @classmethod
    def _check_health_host(cls, value: str) -> str:
        value = value.strip().strip("[]")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if (
                not value
                or len(value) > 253
                or not all(label and label.replace("-", "").isalnum() for label in value.split("."))
            ):
                raise ValueError(
                    "must be an IP address or a host name, e.g. 0.0.0.0 or 127.0.0.1"
                ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return value

    def secrets(self) -> list[str]:
        """Every secret value, for the log redactor."""
        values = [self.supabase_service_role_key.get_secret_value()]
        values.append(self.generator_token.get_secret_value())
        values.append(self.dashboard_token.get_secret_value())
        if self.cloudinary_url is not None:
            url = self.cloudinary_url.get_secret_value()
            values.append(url)
            creds = url.removeprefix("cloudinary://").split("@", 1)[0]
            if ":" in creds:
                # The secret, and KEY:SECRET whose base64 is HTTP Basic authentication's.
                values += [creds.split(":", 1)[1], creds]
        return [v for v in values if v and len(v) >= 4]


def require(settings: Settings, *names: str) -> None:
    """Settings optional in general but required by a command (e.g. ``run`` needs a generator)."""
    for name in names:
        if getattr(settings, name) in (None, ""):
            raise MissingSetting(name.upper())


class MissingSetting(Exception):
    def __init__(self, variable: str) -> None:
        super().__init__(f"{variable} is required")
        self.variable = variable
