"""The poll timer: wakes the dispatcher on a jittered interval.

It runs on every replica with jitter, so replicas spread out instead of hitting the database in
step, and no leader is needed: every statement they trigger is atomic and safe to race.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

Wake = Callable[[str], None]


def jittered(seconds: float, spread: float = 0.2) -> float:
    return seconds * random.uniform(1 - spread, 1 + spread)


async def poll_forever(wake: Wake, schedule: Callable[[], tuple[float, str]]) -> None:
    """Wake the dispatcher on a jittered timer. ``schedule()`` says how long and with which
    trigger, so realtime mode can poll fast while unhealthy and slowly while healthy; it is
    re-read every second, so a drop switches to the fast interval at once, not after a sweep."""
    last = time.monotonic()
    jitter = jittered(1.0)
    while True:
        interval, trigger = schedule()
        wait = last + interval * jitter - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, 1.0))
            continue
        wake(trigger)
        last = time.monotonic()
        jitter = jittered(1.0)
