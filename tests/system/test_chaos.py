"""The chaos soak: three real worker processes, a stream of 1,800 mixed jobs and random faults.

    uv run pytest -m chaos -q -s                      # a fresh seed each run (printed)
    CHAOS_SEED=1234 uv run pytest -m chaos -q -s      # replay a run's fault schedule

While jobs are inserted in a stream, one driver randomly (seeded RNG) drops, freezes and closes
the Realtime socket, refuses WebSocket upgrades, fails and hangs REST calls and Cloudinary
uploads; another SIGKILLs (and every fourth time SIGTERMs) the busiest worker and restarts them. Then the faults
stop, the workers drain the queue and are stopped with SIGTERM (exit 0).

The guarantees checked, each violation named with its job and evidence:
- nothing lost: every inserted job is in the table and terminal (``complete`` or ``failed``);
- at most one completion: an audit trigger (created by the test) records every status
  transition; no job reaches ``complete`` twice or leaves a terminal status, and the completion
  is written under the lease token and worker of the job's last claim; no two workers log a
  completion of the same job;
- outcomes: jobs whose behaviour succeeds or recovers are complete, unless they ran out of
  attempts because of the chaos (the message says so); bad input and permanent generator
  failures fail with their reason; poison jobs (``[gen:hang]``) fail after their attempts;
- messages: one line, under 500 characters, no traceback, no secret; no secret in the logs;
- a job is never claimed more than JOB_MAX_ATTEMPTS times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devstack.stack import DevStack
from tests.helpers import spawn_worker, worker_env
from worker.wakeups.realtime import RealtimeWakeups

pytestmark = pytest.mark.chaos

JOBS = 1800
WORKERS = 3
MAX_ATTEMPTS = 3
LEASE_SECONDS = 5
GENERATOR_TIMEOUT = 3
INSERT_SECONDS = 180  # jobs are inserted in a stream over this long
CHAOS_SECONDS = 210  # faults and kills run this long from the first insert
DRAIN_DEADLINE = 240  # then every job must be terminal within this long
MAX_IMAGE_BYTES = 1024 * 1024

ATTEMPTS_RE = re.compile(r"\battempts?\b")
SUCCESS = "success"  # the behaviour succeeds, at once or after transient failures
PERMANENT = "permanent"  # the job must fail with this reason
POISON = "poison"  # never answers: fails after its generator attempts or its claims


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    expect: str
    prompt: str  # "{n}" is replaced by the job's number
    aspect_ratio: str = "1:1"
    failure: str = ""  # a regex the error_message of a PERMANENT/POISON job matches
    generator_called: bool = True


# Full-size answers (png, base64, …) share a few prompts so the stand-in renders each ~1 MP image
# once (it caches by prompt); ``tiny`` jobs get a 64×64 PNG whatever their prompt.
KINDS = [
    Kind("tiny", 50, SUCCESS, "chaos tiny #{n} [gen:tiny]"),
    Kind("tiny_16x9", 8, SUCCESS, "chaos tiny wide #{n} [gen:tiny]", "16:9"),
    # Slow answers keep jobs in flight, so that kills and REST faults catch some mid-run.
    Kind("slow05", 8, SUCCESS, "chaos slow05 [gen:slow:0.5]"),
    Kind("slow15", 4, SUCCESS, "chaos slow15 [gen:slow:1.5]"),
    Kind("png", 3, SUCCESS, "chaos png [gen:png]"),
    Kind("jpeg_3x2", 2, SUCCESS, "chaos jpeg [gen:jpeg]", "3:2"),
    Kind("base64", 3, SUCCESS, "chaos base64 [gen:base64]"),
    Kind("b64_json", 2, SUCCESS, "chaos b64_json [gen:b64_json]"),
    Kind("image_url", 3, SUCCESS, "chaos image_url [gen:image_url]"),
    Kind("redirect303", 2, SUCCESS, "chaos redirect303 [gen:redirect303]"),
    Kind("cloudinary_link", 1, SUCCESS, "chaos cloudinary_link #{n} [gen:cloudinary_link]"),
    Kind("cold404", 4, SUCCESS, "chaos cold404 [gen:cold404:2]"),
    Kind("status503", 4, SUCCESS, "chaos status503 [gen:status:503:2]"),
    Kind("status429", 2, SUCCESS, "chaos status429 [gen:status:429:1]"),
    Kind(
        "status400",
        3,
        PERMANENT,
        "chaos rejected #{n} [gen:status:400]",
        failure=r"^generator rejected the request: .*content filter",
    ),
    Kind(
        "html_as_png",
        2,
        PERMANENT,
        "chaos html #{n} [gen:html_as_png]",
        failure=r"^generator returned image/png data that is not a PNG, JPEG, WebP or GIF image$",
    ),
    Kind(
        "bad_base64",
        2,
        PERMANENT,
        "chaos b64 #{n} [gen:bad_base64]",
        failure=r"^generator returned invalid base64 image data$",
    ),
    Kind(
        "json_no_image",
        1,
        PERMANENT,
        "chaos noimg #{n} [gen:json_no_image]",
        failure=r"^generator returned JSON without an image",
    ),
    Kind(
        "oversize",
        1,
        PERMANENT,
        "chaos big #{n} [gen:oversize:3000000]",
        failure=r"^image is 2\.9 MB, over the 1 MB limit$",
    ),
    Kind(
        "bad_aspect",
        2,
        PERMANENT,
        "chaos bad ratio #{n} [gen:tiny]",
        "5:4",
        failure=r"^aspect ratio '5:4' is not one of ",
        generator_called=False,
    ),
    Kind("empty_prompt", 1, PERMANENT, "", failure=r"^prompt is empty$", generator_called=False),
    Kind(
        "long_prompt",
        1,
        PERMANENT,
        "x" * 4001 + " [gen:tiny]",
        failure=r"^prompt is \d+ characters, over the 4000 limit$",
        generator_called=False,
    ),
]
POISON_KIND = Kind(
    "hang",
    0,
    POISON,
    "chaos poison #{n} [gen:hang]",
    failure=rf"^generator timed out after 4 attempts \({GENERATOR_TIMEOUT} s each\)$",
)
POISON_JOBS = 6
PROBE_KIND = Kind("probe", 0, SUCCESS, "")
PROBES = 5


@dataclass
class Planned:
    id: str
    kind: Kind
    prompt: str
    aspect_ratio: str


@dataclass
class Chaos:
    """What the drivers did: printed at the end, and the exit codes checked."""

    faults: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    terms: int = 0
    term_exit_codes: list[tuple[str, int | None]] = field(default_factory=list)
    unexpected_exits: list[tuple[str, int | None]] = field(default_factory=list)
    spawned: int = 0


def _plan(rng: random.Random) -> list[Planned]:
    weights = [k.weight for k in KINDS]
    kinds = rng.choices(KINDS, weights=weights, k=JOBS - POISON_JOBS)
    # Poison jobs spread over the stream (not in its last fifth, so they end within the run).
    for _ in range(POISON_JOBS):
        kinds.insert(rng.randrange(len(kinds) * 4 // 5), POISON_KIND)
    return [
        Planned(str(uuid.uuid4()), kind, kind.prompt.replace("{n}", str(n)), kind.aspect_ratio)
        for n, kind in enumerate(kinds)
    ]


AUDIT_SQL = """
create schema if not exists chaos;
create table if not exists chaos.transitions (
  seq bigserial primary key,
  job_id uuid not null,
  old_status text,
  new_status text not null,
  lease_token uuid,
  worker_id text,
  attempts integer,
  at timestamptz not null default clock_timestamp()
);
-- security definer: the worker's REST calls run as service_role, which cannot see this schema.
create or replace function chaos.record_transition() returns trigger
language plpgsql security definer set search_path = pg_catalog, chaos as $$
begin
  if tg_op = 'INSERT' then
    insert into chaos.transitions (job_id, old_status, new_status, lease_token, worker_id, attempts)
    values (new.id, null, new.status, new.lease_token, new.worker_id, new.attempts);
  elsif old.status is distinct from new.status or old.lease_token is distinct from new.lease_token
  then
    insert into chaos.transitions (job_id, old_status, new_status, lease_token, worker_id, attempts)
    values (new.id, old.status, new.status, new.lease_token, new.worker_id, new.attempts);
  end if;
  return null;
end
$$;
drop trigger if exists chaos_record_transition on public.jobs;
create trigger chaos_record_transition after insert or update on public.jobs
  for each row execute function chaos.record_transition();
"""


class Fleet:
    """Three worker slots: each holds one process; killed or stopped workers are replaced."""

    def __init__(self, env: dict[str, str], chaos: Chaos) -> None:
        self.env = env
        self.chaos = chaos
        self.slots: list[subprocess.Popen | None] = [None] * WORKERS
        self.generation = [0] * WORKERS
        self.all: list[subprocess.Popen] = []

    def start(self, slot: int) -> None:
        self.generation[slot] += 1
        proc = spawn_worker(self.env, f"chaos-w{slot}-g{self.generation[slot]}")
        self.slots[slot] = proc
        self.all.append(proc)
        self.chaos.spawned += 1

    def ensure_all(self) -> None:
        for slot, proc in enumerate(self.slots):
            if proc is None or proc.poll() is not None:
                self.start(slot)

    async def kill(self, slot: int) -> None:
        proc = self.slots[slot]
        if proc is None or proc.poll() is not None:
            return
        self.slots[slot] = None
        proc.send_signal(signal.SIGKILL)
        await _wait_exit(proc, 10)
        self.chaos.kills += 1

    async def terminate(self, slot: int, timeout: float = 40) -> None:
        proc = self.slots[slot]
        if proc is None or proc.poll() is not None:
            return
        self.slots[slot] = None
        proc.send_signal(signal.SIGTERM)
        code = await _wait_exit(proc, timeout)
        self.chaos.terms += 1
        self.chaos.term_exit_codes.append((proc.worker_id, code))  # type: ignore[attr-defined]

    def kill_leftovers(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


async def _wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code, or None when the process is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return proc.returncode


async def _insert_stream(stack: DevStack, plan: list[Planned], rng: random.Random) -> None:
    """Insert the planned jobs in small batches spread over INSERT_SECONDS."""
    batches: list[list[Planned]] = []
    i = 0
    while i < len(plan):
        n = rng.randint(1, 9)
        batches.append(plan[i : i + n])
        i += n
    pause = INSERT_SECONDS / len(batches)
    started = time.monotonic()
    for number, batch in enumerate(batches):
        await stack.pool.execute(
            "insert into public.jobs (id, prompt, model, aspect_ratio) "
            "select id, prompt, 'chaos-model', ratio "
            "from unnest($1::uuid[], $2::text[], $3::text[]) as t(id, prompt, ratio)",
            [uuid.UUID(p.id) for p in batch],
            [p.prompt for p in batch],
            [p.aspect_ratio for p in batch],
        )
        # Keep to the schedule however long the inserts take (a busy machine).
        wait = started + (number + 1 + rng.uniform(-0.5, 0.5)) * pause - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


async def _fault_driver(stack: DevStack, rng: random.Random, chaos: Chaos, until: float) -> None:
    """A random fault every few seconds until ``until`` (monotonic)."""
    started = time.monotonic()
    first_round: list[str] = []
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        elapsed = time.monotonic() - started
        choices = [
            "realtime_drop",
            "realtime_close_1001",
            "realtime_freeze",
            "realtime_refuse_upgrades",
            "realtime_system_error",
            "realtime_phx_error",
            "rest_fail_503",
            "rest_fail_next",
            "rest_hang",
            "cloudinary_fail",
        ]
        # A hung upload is abandoned by the worker after 60 s: only early, so the drain is short.
        if elapsed < 60:
            choices.append("cloudinary_hang")
        if not chaos.faults:  # every kind of fault once, in random order, then at random
            first_round = rng.sample(choices, len(choices))
        fault = first_round.pop() if first_round else rng.choice(choices)
        chaos.faults[fault] += 1
        if fault == "realtime_drop":
            stack.realtime.drop_all()
        elif fault == "realtime_close_1001":
            stack.realtime.close_all(code=1001)
        elif fault == "realtime_freeze":
            stack.realtime.freeze(rng.uniform(5, 20))
        elif fault == "realtime_refuse_upgrades":
            stack.realtime.refuse_upgrades(rng.uniform(5, 25))
            stack.realtime.drop_all()
        elif fault == "realtime_system_error":
            stack.realtime.system_error_close()
        elif fault == "realtime_phx_error":
            stack.realtime.phx_error()
        elif fault == "rest_fail_503":
            stack.rest.fail_for(rng.uniform(1, 3), status=503)
        elif fault == "rest_fail_next":
            stack.rest.fail_next(rng.randint(2, 10), status=rng.choice([500, 502, 503]))
        elif fault == "rest_hang":
            stack.rest.hang_for(rng.uniform(0.5, 2))
        elif fault == "cloudinary_fail":
            stack.cloudinary.fail_next(rng.randint(1, 3), status=rng.choice([500, 502, 503]))
        elif fault == "cloudinary_hang":
            stack.cloudinary.hang_next(1)


async def _kill_driver(stack: DevStack, fleet: Fleet, rng: random.Random, until: float) -> None:
    """Every 8–16 s the busiest worker dies and is restarted a moment later: SIGKILL, except
    every fourth time SIGTERM (a deploy), whose exit code must be 0."""
    deaths = 0
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(8, 16))
        if time.monotonic() >= until:
            break
        running = Counter(
            {
                r["worker_id"]: r["n"]
                for r in await stack.pool.fetch(
                    "select worker_id, count(*) as n from public.jobs "
                    "where status = 'running' group by worker_id"
                )
            }
        )
        slots = list(range(WORKERS))
        rng.shuffle(slots)  # ties (idle workers) broken at random
        slot = max(slots, key=lambda i: running[getattr(fleet.slots[i], "worker_id", None)])
        deaths += 1
        if deaths % 4:
            await fleet.kill(slot)
        else:
            await fleet.terminate(slot)
        await asyncio.sleep(rng.uniform(0.5, 3))
        fleet.start(slot)


async def _watch_fleet(fleet: Fleet, until: float) -> None:
    """A worker that dies on its own is a finding (reported at the end), and is replaced."""
    while time.monotonic() < until:
        await asyncio.sleep(1)
        for slot, proc in enumerate(fleet.slots):
            if proc is not None and proc.poll() is not None:
                fleet.chaos.unexpected_exits.append(
                    (proc.worker_id, proc.returncode)  # type: ignore[attr-defined]
                )
                fleet.start(slot)


async def _all_realtime_healthy(fleet: Fleet, timeout: float) -> list[str]:
    """Wait until the last Realtime state each live worker logged is "healthy"; the workers
    that are not healthy after ``timeout``."""
    state_re = re.compile(
        r" - (realtime (healthy|down|connecting|joined|closed|errored|timed)"
        r"|rebuilding the realtime client|realtime connection failed|realtime socket did not)"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states: list[bool] = []
        for proc in fleet.slots:
            text = proc.log_path.read_text(errors="replace") if proc else ""  # type: ignore[attr-defined]
            lines = [ln for ln in text.splitlines() if state_re.search(ln)]
            states.append(bool(lines) and "realtime healthy" in lines[-1])
        if all(states):
            return []
        await asyncio.sleep(0.5)
    return [
        proc.worker_id  # type: ignore[attr-defined]
        for proc, healthy in zip(fleet.slots, states, strict=True)
        if proc and not healthy
    ]


async def _claim_trigger_when_done(stack: DevStack, job_id: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await stack.pool.fetchrow(
            "select status, claim_trigger from public.jobs where id = $1", uuid.UUID(job_id)
        )
        if row["status"] in ("complete", "failed"):
            return row["claim_trigger"]
        await asyncio.sleep(0.05)
    return None


async def _pending_or_running(stack: DevStack) -> int:
    return await stack.pool.fetchval(
        "select count(*) from public.jobs where status in ('pending', 'running')"
    )


def _secrets(stack: DevStack) -> dict[str, str]:
    cloudinary_secret = urlsplit(stack.env["CLOUDINARY_URL"]).password or ""
    found = {
        "SUPABASE_SERVICE_ROLE_KEY": stack.env["SUPABASE_SERVICE_ROLE_KEY"],
        "Cloudinary API secret": cloudinary_secret,
        "GENERATOR_TOKEN": stack.env["GENERATOR_TOKEN"],
    }
    assert all(len(v) >= 16 for v in found.values()), "a secret of the stack is unexpectedly short"
    return found


def _reason(message: str) -> str:
    """An error message with its ids and numbers taken out, to count failures by reason."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", message)
    text = re.sub(r"chaos-w\d+-g\d+", "<worker>", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:140]


@pytest.mark.timeout(900)
async def test_chaos_soak(stack: DevStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\nchaos seed: {seed}  (replay with CHAOS_SEED={seed})", flush=True)
    log_dir = tmp_path / "worker-logs"
    monkeypatch.setenv("WORKER_TEST_LOGS", str(log_dir))
    print(f"worker logs: {log_dir}", flush=True)
    rng = random.Random(seed)
    plan = _plan(random.Random(rng.random()))
    by_id = {p.id: p for p in plan}
    await stack.pool.execute(AUDIT_SQL)

    env = worker_env(
        stack,
        worker_mode="realtime",
        worker_concurrency=8,
        worker_lease_seconds=LEASE_SECONDS,
        worker_poll_interval_seconds=1,
        worker_shutdown_grace_seconds=2,
        generator_retry_delays="0.2,0.5,1",
        generator_timeout_seconds=GENERATOR_TIMEOUT,
        job_max_attempts=MAX_ATTEMPTS,
        max_image_bytes=MAX_IMAGE_BYTES,
        log_level="INFO",
    )
    chaos = Chaos()
    fleet = Fleet(env, chaos)
    started = time.monotonic()
    try:
        fleet.ensure_all()
        await asyncio.sleep(2)  # let them start; the stream begins either way
        chaos_until = time.monotonic() + CHAOS_SECONDS
        inserter = asyncio.create_task(_insert_stream(stack, plan, random.Random(rng.random())))
        drivers = [
            asyncio.create_task(
                _fault_driver(stack, random.Random(rng.random()), chaos, chaos_until)
            ),
            asyncio.create_task(
                _kill_driver(stack, fleet, random.Random(rng.random()), chaos_until)
            ),
            asyncio.create_task(_watch_fleet(fleet, chaos_until + DRAIN_DEADLINE)),
        ]
        await inserter
        inserted_at = time.monotonic() - started
        await asyncio.gather(*drivers[:2])
        chaos_ended_at = time.monotonic() - started

        # The storm is over: no faults, three workers, and the queue must drain.
        stack.rest.clear_faults()
        stack.realtime.clear_faults()
        stack.cloudinary.clear_faults()
        fleet.ensure_all()
        deadline = time.monotonic() + DRAIN_DEADLINE
        while left := await _pending_or_running(stack):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        drained_at = time.monotonic() - started
        drivers[2].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drivers[2]
        # Realtime push works again once the storm is over: single inserts on the idle workers
        # are claimed through a Realtime event, not by a poll or a catch-up.
        probe_triggers: list[str | None] = []
        unhealthy: list[str] = []
        if not left:
            unhealthy = await _all_realtime_healthy(fleet, timeout=90)
            await asyncio.sleep(RealtimeWakeups.SECOND_CATCHUP_AFTER + 1.5)
            for n in range(PROBES):
                probe = Planned(
                    str(uuid.uuid4()), PROBE_KIND, f"chaos probe #{n} [gen:tiny]", "1:1"
                )
                plan.append(probe)
                by_id[probe.id] = probe
                await stack.pool.execute(
                    "insert into public.jobs (id, prompt) values ($1, $2)",
                    uuid.UUID(probe.id),
                    probe.prompt,
                )
                probe_triggers.append(await _claim_trigger_when_done(stack, probe.id, 30))
        for slot in range(WORKERS):
            await fleet.terminate(slot, timeout=30)
    finally:
        fleet.kill_leftovers()
    duration = time.monotonic() - started

    violations: list[str] = []
    rows = {
        str(r["id"]): r
        for r in await stack.pool.fetch(
            "select id, status, attempts, error_message, image_url, thumbnail_url, worker_id, "
            "lease_token, progress, prompt from public.jobs"
        )
    }
    transitions: dict[str, list] = defaultdict(list)
    for t in await stack.pool.fetch("select * from chaos.transitions order by seq"):
        transitions[str(t["job_id"])].append(t)
    secrets = _secrets(stack)
    logs = {p.stem: p.read_text(errors="replace") for p in sorted(log_dir.glob("*.log"))}
    completions_logged: dict[str, set[str]] = defaultdict(set)
    for text in logs.values():
        for m in re.finditer(r"^\S+ \S+ \S+\s+(\S+) (\S+) job complete: ", text, re.M):
            completions_logged[m.group(2)].add(m.group(1))

    # Shutdown: every SIGTERM (restarts and the final stop) exits 0, no worker dies on its own.
    for worker_id, code in chaos.term_exit_codes:
        if code != 0:
            violations.append(f"worker {worker_id}: exit code {code} after SIGTERM (expected 0)")
    for worker_id, code in chaos.unexpected_exits:
        violations.append(f"worker {worker_id} exited on its own with code {code}")

    outcome: Counter[str] = Counter()
    failed_reasons: Counter[str] = Counter()
    exhausted: list[str] = []  # jobs that would have succeeded but ran out of attempts
    for job_id, p in by_id.items():
        row = rows.get(job_id)
        kind = p.kind
        where = f"job {job_id} ({kind.name})"
        if row is None:
            violations.append(f"{where} lost: not in public.jobs")
            continue
        status, message = row["status"], row["error_message"] or ""
        outcome[f"{kind.name}:{status}"] += 1
        history = transitions[job_id]
        trail = " → ".join(
            f"{t['new_status']}[{t['worker_id'] or '-'} a{t['attempts']}]" for t in history
        )
        if status not in ("complete", "failed"):
            violations.append(
                f"{where} left behind: still {status} after the drain "
                f"(attempts {row['attempts']}, worker {row['worker_id']}); transitions: {trail}"
            )
            continue
        if row["attempts"] > MAX_ATTEMPTS:
            violations.append(f"{where} claimed {row['attempts']} times: {trail}")

        # At most one completion, by the holder of the last claim; terminal stays terminal.
        completes = [t for t in history if t["new_status"] == "complete"]
        if len(completes) > 1 or (status == "complete" and not completes):
            violations.append(f"{where} became complete {len(completes)} times: {trail}")
        for i, t in enumerate(history):
            if t["old_status"] in ("complete", "failed"):
                violations.append(
                    f"{where} left terminal status {t['old_status']} for {t['new_status']}: {trail}"
                )
            if t["new_status"] == "complete":
                claims = [c for c in history[:i] if c["new_status"] == "running"]
                last = claims[-1] if claims else None
                if last is None or (last["lease_token"], last["worker_id"]) != (
                    t["lease_token"],
                    t["worker_id"],
                ):
                    violations.append(
                        f"{where} completed under lease {t['lease_token']} by {t['worker_id']}, "
                        f"but its last claim was {last and last['lease_token']} by "
                        f"{last and last['worker_id']}: {trail}"
                    )
        loggers = completions_logged.get(job_id, set())
        if len(loggers) > 1:
            violations.append(f"{where} logged as completed by {sorted(loggers)}: {trail}")

        for column in ("error_message", "image_url", "thumbnail_url", "worker_id"):
            value = row[column] or ""
            for name, secret in secrets.items():
                if secret in value:
                    violations.append(f"{where}: {column} contains the {name}")

        if status == "complete":
            if kind.expect != SUCCESS:
                violations.append(f"{where} completed, but it must fail ({kind.failure!r})")
            if not row["image_url"] or not row["thumbnail_url"] or row["progress"] != 100:
                violations.append(
                    f"{where} complete without image_url/thumbnail_url/progress 100: "
                    f"{row['image_url']!r} {row['thumbnail_url']!r} {row['progress']}"
                )
            elif kind.name != "cloudinary_link":
                public_id = f"generations/{job_id}"
                if f"/{public_id}." not in row["image_url"]:
                    violations.append(f"{where} image_url {row['image_url']} is not {public_id}")
                if not stack.cloudinary.uploads.get(public_id):
                    violations.append(f"{where} complete but nothing uploaded as {public_id}")
            if message:
                violations.append(f"{where} complete with an error_message: {message!r}")
            if loggers and loggers != {row["worker_id"]}:
                violations.append(
                    f"{where} completed by {row['worker_id']} in the row, but logged by "
                    f"{sorted(loggers)}"
                )
            continue

        # Failed: one clear line, and the right reason.
        failed_reasons[_reason(message)] += 1
        if not message.strip():
            violations.append(f"{where} failed without an error_message: {trail}")
        if len(message) >= 500 or "\n" in message or "Traceback" in message:
            violations.append(f"{where} error_message is not one short line: {message!r}")
        out_of_attempts = bool(ATTEMPTS_RE.search(message))
        if kind.expect == SUCCESS and out_of_attempts:
            exhausted.append(f"{where}: {message}")
        if kind.expect == SUCCESS and not out_of_attempts:
            violations.append(
                f"{where} failed, but its behaviour succeeds or recovers: {message!r}; {trail}"
            )
        if kind.expect in (PERMANENT, POISON) and not (
            re.search(kind.failure, message) or out_of_attempts
        ):
            violations.append(
                f"{where} failed with {message!r}, expected /{kind.failure}/ or out of attempts"
            )
        if not kind.generator_called and stack.generator.calls.get(job_id):
            violations.append(f"{where}: bad input reached the generator")

    for worker_id, text in logs.items():
        for name, secret in secrets.items():
            if secret in text:
                line = next(ln for ln in text.splitlines() if secret in ln)
                violations.append(
                    f"log of {worker_id} contains the {name}: {line.replace(secret, '<SECRET>')}"
                )
    if unhealthy:
        violations.append(f"realtime not healthy 90 s after the faults ended on {unhealthy}")
    if not left and probe_triggers != ["realtime"] * PROBES:
        violations.append(
            f"after the faults, probe jobs were claimed by {probe_triggers}, not all by a "
            "Realtime event: Realtime push did not recover"
        )
    extra = set(rows) - set(by_id)
    if extra:
        violations.append(f"{len(extra)} unexpected jobs in the table: {sorted(extra)[:5]}")

    # The report.
    status_counts = Counter(r["status"] for r in rows.values())
    rebuilds = sum(t.count("rebuilding the realtime client") for t in logs.values())
    lease_rescues = sum(t.count("returned to the queue: the lease") for t in logs.values())
    lease_lost = sum(t.count("lease lost:") for t in logs.values())
    uploads = sum(len(v) for v in stack.cloudinary.uploads.values())
    reuploaded = sum(1 for v in stack.cloudinary.uploads.values() if len(v) > 1)
    triggers = Counter(
        r["claim_trigger"] for r in await stack.pool.fetch("select claim_trigger from public.jobs")
    )
    print(f"\n=== chaos soak, seed {seed} ===")
    print(
        f"duration {duration:.0f} s (inserted by {inserted_at:.0f} s, faults until "
        f"{chaos_ended_at:.0f} s, drained at {drained_at:.0f} s)"
    )
    print(f"jobs {len(plan)}: {dict(status_counts)}; claim triggers {dict(triggers)}")
    print(
        f"workers: spawned {chaos.spawned}, SIGKILLed {chaos.kills}, SIGTERMed {chaos.terms}; "
        f"realtime rebuilds {rebuilds}; leases rescued {lease_rescues}; leases lost {lease_lost}"
    )
    print(f"faults injected ({sum(chaos.faults.values())}): {dict(sorted(chaos.faults.items()))}")
    print(f"uploads {uploads} ({reuploaded} public_ids uploaded more than once)")
    print(f"probes after the storm claimed by: {probe_triggers}")
    print(f"SIGTERM exit codes: {dict(Counter(code for _, code in chaos.term_exit_codes))}")
    print(f"jobs that would succeed but ran out of attempts: {len(exhausted)}")
    for line in exhausted:
        print(f"  {line}")
    print("outcomes by kind:")
    for key, n in sorted(outcome.items()):
        print(f"  {key:<28} {n}")
    print("failed by reason:")
    for reason, n in failed_reasons.most_common():
        print(f"  {n:>4}  {reason}")
    if violations:
        print(f"\n{len(violations)} VIOLATIONS:")
        for v in violations[:200]:
            print(f"  - {v}")
    assert not violations, f"seed {seed}: {len(violations)} guarantee violation(s):\n" + "\n".join(
        violations[:40]
    )
    assert not left, f"{left} jobs still pending or running"
    assert chaos.kills >= 5, f"only {chaos.kills} workers were killed"
