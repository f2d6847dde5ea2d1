"""Prometheus metrics of one worker process (served on ``/metrics`` by the health server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_CLAIMED = Counter(
    "image_worker_jobs_claimed",
    "Jobs claimed, by what woke the worker",
    ["trigger"],
    registry=REGISTRY,
)
CLAIM_CALLS = Counter(
    "image_worker_claim_calls",
    "Claim round trips, by trigger and whether they found work",
    ["trigger", "found"],
    registry=REGISTRY,
)
JOBS_COMPLETED = Counter("image_worker_jobs_completed", "Jobs completed", registry=REGISTRY)
JOBS_FAILED = Counter(
    "image_worker_jobs_failed", "Jobs failed, by reason class", ["reason"], registry=REGISTRY
)
JOBS_RETRIED = Counter(
    "image_worker_jobs_retried",
    "Attempts that broke unexpectedly and were put back for a later attempt",
    registry=REGISTRY,
)
JOBS_RESCUED = Counter(
    "image_worker_jobs_rescued",
    "Expired leases recovered by this worker's rescuer, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
JOBS_RELEASED = Counter(
    "image_worker_jobs_released", "Jobs given back at shutdown", registry=REGISTRY
)
JOBS_CANCELLED = Counter(
    "image_worker_jobs_cancelled",
    "Running jobs this worker stopped and ended cancelled after a cancel request",
    registry=REGISTRY,
)
CANCELS_NOTICED = Counter(
    "image_worker_cancels_noticed",
    "Cancel requests of running jobs noticed, by how: realtime (the UPDATE event), watch (the "
    "poll of the running jobs), renewal (a lease renewal's answer)",
    ["via"],
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "image_worker_leases_lost",
    "Jobs abandoned because their lease was taken over or could not be renewed",
    registry=REGISTRY,
)
JOBS_IN_FLIGHT = Gauge("image_worker_jobs_in_flight", "Jobs running now", registry=REGISTRY)
PICKUP_LATENCY = Histogram(
    "image_worker_pickup_latency_seconds",
    "From job creation to claim",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "image_worker_stage_duration_seconds",
    "Duration of each stage of a job",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
DB_ERRORS = Counter(
    "image_worker_database_errors",
    "Database calls that failed or timed out, by operation",
    ["operation"],
    registry=REGISTRY,
)
REALTIME_STATE = Gauge(
    "image_worker_realtime_state",
    "1 for the current Realtime state, 0 for the others",
    ["state"],
    registry=REGISTRY,
)
REALTIME_RECONNECTS = Counter(
    "image_worker_realtime_rebuilds",
    "Times the watchdog rebuilt the Realtime client",
    ["cause"],
    registry=REGISTRY,
)
GENERATOR_ATTEMPTS = Counter(
    "image_worker_generator_attempts",
    "Generator HTTP attempts, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
GENERATION_REQUESTS = Counter(
    "image_worker_generation_requests",
    "Requests that ask the provider for a new (billed) generation, by generator kind",
    ["kind"],
    registry=REGISTRY,
)
GENERATIONS_RESUMED = Counter(
    "image_worker_generations_resumed",
    "Attempts that resumed a stored generation handle instead of paying for a new generation",
    ["kind"],
    registry=REGISTRY,
)
GENERATOR_THROTTLED = Counter(
    "image_worker_generator_throttled",
    "Throttled answers (429, or 503 with Retry-After) from the provider, by generator kind",
    ["kind"],
    registry=REGISTRY,
)
PROVIDER_CANCELS = Counter(
    "image_worker_provider_cancels",
    "Generations cancelled at the provider (job cancelled or failed, lease lost, handle unused)",
    ["kind"],
    registry=REGISTRY,
)
CLOUDINARY_ATTEMPTS = Counter(
    "image_worker_cloudinary_attempts",
    "Cloudinary upload attempts, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
READY = Gauge(
    "image_worker_ready",
    "1 while the replica is ready (database answers, claims succeed), else 0",
    registry=REGISTRY,
)
LOOP_LAG = Gauge(
    "image_worker_event_loop_lag_seconds",
    "How late the health heartbeat woke up: time the event loop spent blocked",
    registry=REGISTRY,
)
