"""The provider interface: what one generator kind implements, and the values it trades in.

A provider (``http.py``, ``replicate.py``, ``openai.py``, ``fal.py``) knows one API and nothing
about jobs, attempts or leases; the driver (``driver.py``) runs it:

    began = await provider.start(request)   # ONE request that may be billed: a Handle, or Finished
    step = await provider.poll(handle, request)   # Pending (maybe a new Handle), or Finished
    await provider.cancel(handle)           # stop a generation nobody will use (if the API can)
    image = await provider.result(finished, request)   # → GeneratedImage (bytes or a link)

A ``Handle`` is the provider's name for a generation in progress: the generic kind's 303
``Location`` (Modal's result URL), a Replicate prediction, a fal request. The driver stores it
in the job's ``generation_ref`` before waiting, so every later attempt resumes it instead of
paying again.

Failures a provider raises: ``JobFailed`` (permanent: the job fails with the sentence),
``ProviderTransient`` (retried with ``GENERATOR_RETRY_DELAYS``; ``Throttled`` when the provider
said how long to wait), ``HandleGone`` (the provider no longer has the generation, or says it
was cancelled: a new one may be started).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from worker.errors import JobFailed, TransientError
from worker.jobs import JobContext
from worker.observability.redact import redact
from worker.text import one_line

QUOTE_CHARS = 200
REF_VERSION = 1


@dataclass(frozen=True)
class GenerationRequest:
    """One job's generation as every provider sees it."""

    job_id: str
    prompt: str
    model: str | None  # the job's model, else GENERATOR_DEFAULT_MODEL
    aspect_ratio: str
    user_id: str | None
    width: int  # the SDXL/Flux bucket of the aspect ratio (pipeline/images.py)
    height: int


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes | None  # validated image bytes (None when cloudinary_link)
    format: str | None  # png/jpeg/webp/gif
    cloudinary_link: str | None  # used as the job's image_url without a new upload
    source: str  # "bytes" | "base64" | "url" | "cloudinary_link"


@dataclass(frozen=True)
class Handle:
    """The provider's name for a generation in progress, as stored in ``generation_ref``."""

    kind: str  # the GENERATOR_KIND that made it: another kind never resumes it
    id: str  # the result URL (http), prediction id (replicate), request id (fal)
    url: str  # where it is followed: the result URL, the prediction, the request
    extra: dict[str, str] = field(default_factory=dict)  # e.g. fal's app id

    def to_ref(self) -> dict[str, Any]:
        return {
            "v": REF_VERSION,
            "kind": self.kind,
            "id": self.id,
            "url": self.url,
            **({"extra": dict(self.extra)} if self.extra else {}),
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_ref(cls, ref: object) -> Handle | None:
        """The handle in a ``generation_ref``; None if it is not one this worker wrote."""
        if not isinstance(ref, dict) or ref.get("v") != REF_VERSION:
            return None
        kind, handle_id, url = ref.get("kind"), ref.get("id"), ref.get("url")
        extra = ref.get("extra", {})
        if not all(isinstance(v, str) and v and len(v) <= 4096 for v in (kind, handle_id, url)):
            return None
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            return None
        return cls(kind, handle_id, url, dict(extra))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Finished:
    """A generation's final answer, still to be turned into an image by ``result``."""

    output: Any


@dataclass(frozen=True)
class Pending:
    """Not done yet. ``handle``: the generation moved (a new result URL, to store);
    ``wait``: seconds before the next poll (None: the driver's pacing)."""

    handle: Handle | None = None
    wait: float | None = None


class ProviderTransient(TransientError):
    """Worth another attempt. ``kind`` picks the final sentence once attempts run out:
    "status", "stopped", "timeout", "connection", "gone"."""

    def __init__(self, kind: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail or kind
        self.retry_after = retry_after


class Throttled(ProviderTransient):
    """The provider is throttling (429, or 503 with ``Retry-After``): no new request before
    ``retry_after`` seconds (None: it did not say). ``creation``: it refused a generation
    request, so every generation of this replica waits (``throttle.ThrottleGate``)."""

    def __init__(self, detail: str, retry_after: float | None, *, creation: bool) -> None:
        super().__init__("status", detail, retry_after)
        self.creation = creation


class GenerationFailed(JobFailed):
    """The provider says the generation itself failed or was refused (a model error, a safety
    filter): final, and nothing is left running to cancel."""


class HandleGone(Exception):
    """The provider no longer has the generation, or says it was cancelled or aborted: a new
    one may be started. ``detail`` says what the provider said."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Provider(Protocol):
    """One generator kind's API. See the module docstring for the protocol."""

    kind: str
    # Whether the API can stop a generation (Replicate, fal: yes; Modal web endpoints and
    # OpenAI's Images API: no).
    can_cancel: bool

    def check(self, request: GenerationRequest) -> None:
        """Refuse (``JobFailed``, reason ``bad_input``) what the provider cannot take, before
        anything is spent: a model name of the wrong shape."""
        ...

    def accepts(self, handle: Handle) -> bool:
        """Whether a stored handle is one this provider can resume."""
        ...

    async def start(self, request: GenerationRequest) -> Handle | Finished: ...

    async def poll(self, handle: Handle, request: GenerationRequest) -> Pending | Finished: ...

    def poll_interval(self, polls: int) -> float:
        """Seconds between polls of a generation after ``polls`` polls."""
        ...

    async def cancel(self, handle: Handle) -> None:
        """Best effort; never raises for an answer (a finished generation stays finished)."""
        ...

    async def result(self, finished: Finished, request: GenerationRequest) -> GeneratedImage: ...

    async def aclose(self) -> None: ...


class GeneratorContext:
    """What the generator asks of the engine while it runs a job: store the handle under the
    lease, ask whether the job still refers to it, and learn why it is being stopped. Built
    from the step's ``progress`` (a ``JobContext`` in production); ``detached()`` stores nothing."""

    def __init__(self, job: JobContext | None) -> None:
        self._job = job

    @classmethod
    def of(cls, progress: object) -> GeneratorContext:
        return cls(progress if isinstance(progress, JobContext) else None)

    @classmethod
    def detached(cls) -> GeneratorContext:
        return cls(None)

    @property
    def stop_reason(self) -> str | None:
        return self._job.stop_reason if self._job is not None else None

    async def save(self, ref: dict[str, Any] | None) -> bool | None:
        return await self._job.save_generation_ref(ref) if self._job is not None else None

    async def in_use(self, ref_id: str) -> bool | None:
        return await self._job.generation_ref_in_use(ref_id) if self._job is not None else None


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """A remote service's own words, safe for a job row: known secrets masked, control and
    bidirectional marks dropped, whitespace collapsed (``worker.text.one_line``), at most ``limit`` characters. Only for
    text from the generator's own origin or the provider's API, never from another origin."""
    cleaned = redact.mask_known(one_line(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
