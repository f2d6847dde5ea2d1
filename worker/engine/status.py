"""The worker's state as one immutable snapshot: what health, metrics pages and the demo read.

The app builds a fresh ``WorkerStatus`` on each ``status()`` call from its services' public
counters; readers never reach into the dispatcher, the wake-up sources or the app itself.
Times are ``time.monotonic()`` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RealtimeStatus:
    state: str  # connecting, joined, healthy, down, stopped
    since: float
    rebuilds: int
    events: int

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    worker_id: str
    mode: str
    concurrency: int
    started_at: float
    # The longest a healthy dispatcher may go without a wake-up (the slowest timer).
    longest_wake_gap: float
    ready: bool = False  # claiming work
    stopping: bool = False
    failed: bool = False  # a service stopped unexpectedly: shutting down, exit code 1
    in_flight: int = 0
    dispatcher_alive_at: float | None = None
    last_claim_at: float | None = None
    last_claim_error: str | None = None
    claimed_by_trigger: Mapping[str, int] = field(default_factory=dict)
    realtime: RealtimeStatus | None = None
