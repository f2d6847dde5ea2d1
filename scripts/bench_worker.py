"""A worker process for benchmarks: the real Worker, optionally with an instant step.

``--step instant`` completes each job at once (it measures the worker's own overhead: claims,
leases, completion writes); ``--step sleep`` takes ``BENCH_STEP_SECONDS`` (default 0.2) per job
and uploads nothing (fairness and cancel benchmarks: busy slots, a stoppable step);
``--step pipeline`` runs the real generate → upload pipeline.
Settings come from the environment, as for ``image-worker run``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from worker.engine.app import Worker
from worker.jobs import Job, JobResult
from worker.observability.logs import configure_logging
from worker.settings import Settings


async def instant(job: Job, progress) -> JobResult:
    return JobResult(f"https://bench.invalid/{job.id}.png", f"https://bench.invalid/{job.id}_t.png")


async def sleep(job: Job, progress) -> JobResult:
    await asyncio.sleep(float(os.environ.get("BENCH_STEP_SECONDS", "0.2")))
    return await instant(job, progress)


async def main(step: str) -> int:
    settings = Settings()
    configure_logging(settings)
    worker = Worker(settings, {"instant": instant, "sleep": sleep}.get(step))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    return await worker.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", choices=("instant", "sleep", "pipeline"), default="instant")
    sys.exit(asyncio.run(main(parser.parse_args().step)))
