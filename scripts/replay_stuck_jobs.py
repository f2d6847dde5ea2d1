#!/usr/bin/env python
"""Requeue stuck jobs: a thin wrapper over ``image-worker replay`` (same options, same output).

    uv run scripts/replay_stuck_jobs.py --stuck-for 30m --dry-run
    uv run scripts/replay_stuck_jobs.py --failed --yes --reason "generator outage"

See ``image-worker replay --help``.
"""

from __future__ import annotations

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["replay"]
    sys.argv[0] = "image-worker"
    main()
