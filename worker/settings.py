"""Every setting of the worker, read from the environment (and ``.env``), validated once at start."""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")

# The jobs table, in schema public: fixed, the SQL functions of the migrations name it.
JOBS_TABLE = "jobs"


class WorkerMode(StrEnum):
    REALTIME = "realtime"
    POLLING = "polling"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Names and defaults are part of the public contract: do not rename."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    supabase_url: str
    supabase_service_role_key: SecretStr
    worker_mode: WorkerMode = WorkerMode.REALTIME
    worker_poll_interval_seconds: float = Field(5.0, gt=0)
    worker_concurrency: int = Field(4, ge=1, le=1024)
    worker_id: str = Field(default_factory=_default_worker_id, min_length=1, max_length=200)
    worker_lease_seconds: float = Field(60.0, ge=3)
    worker_shutdown_grace_seconds: float = Field(30.0, ge=0)
    job_max_attempts: int = Field(3, ge=1)
    # Retired in contract v2: the table is public.jobs and the SQL is static. Kept so that
    # JOBS_TABLE=jobs (older deploy files) still starts; any other value is refused.
    jobs_table: str = JOBS_TABLE

    generator_url: str | None = None
    generator_token: SecretStr = SecretStr("")
    generator_timeout_seconds: float = Field(300.0, gt=0)
    generator_retry_delays: Annotated[tuple[float, ...], NoDecode] = (10.0, 20.0, 30.0)

    cloudinary_url: SecretStr | None = None
    cloudinary_folder: str = "generations"
    thumbnail_size: int = Field(256, ge=16, le=4096)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(4000, ge=1)
    allow_insecure_downloads: bool = False

    health_port: int = Field(8080, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT

    @field_validator("supabase_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
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
    def _check_generator_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

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
            return delays
        return value

    @field_validator("cloudinary_url")
    @classmethod
    def _check_cloudinary_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not value.get_secret_value().startswith("cloudinary://"):
            raise ValueError("must look like cloudinary://KEY:SECRET@CLOUD")
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
        if self.cloudinary_url is not None:
            url = self.cloudinary_url.get_secret_value()
            values.append(url)
            creds = url.removeprefix("cloudinary://").split("@", 1)[0]
            if ":" in creds:
                values.append(creds.split(":", 1)[1])
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
