"""worker/ops/render.py: what `status` and `replay` print, whatever the rows hold."""

from __future__ import annotations

import io
import re

from rich.console import Console

from worker.ops.render import job_table, print_skipped, print_status
from worker.ops.replay import ReplayPlan
from worker.store.operations import Candidate

ESCAPES = "\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b31m\u202ereversed\r\nforged"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def rendered(render) -> str:
    buffer = io.StringIO()
    # Not a terminal: rich adds no escape codes of its own, so any in the output came from data.
    render(Console(file=buffer, width=200, highlight=False, force_terminal=False))
    return buffer.getvalue()


def test_status_shows_control_characters_escaped_never_executed() -> None:
    """Finding 8: an error_message (quoting a remote body) or a worker id holding ESC
    sequences must not clear the operator's screen or retitle their terminal."""
    report = {
        "table": "jobs",
        "counts": {k: 1 for k in ("pending", "running", "complete", "failed", "cancelled", "total")},
        "pending_delayed": 0,
        "oldest_pending_age_seconds": 5.0,
        "stuck_count": 1,
        "running": [{"id": "r1", "worker_id": f"w{ESCAPES}", "progress": 10, "attempts": 1,
                     "running_seconds": 3.0, "lease_seconds_left": 20.0}],
        "stuck": [{"id": "s1", "worker_id": ESCAPES, "progress": 10, "attempts": 1,
                   "lease_expired_seconds": 9.0}],
        "recent_failures": [{"id": "f1", "failed_seconds_ago": 2.0, "attempts": 3,
                             "error_message": f"generator said: {ESCAPES}"}],
    }  # fmt: skip
    text = rendered(lambda out: print_status(out, report))
    assert "generator said:" in text and "red" in text
    assert not CONTROL.search(text), repr(text)
    assert "\\x1b" in text  # shown, so the operator sees something odd was there


def test_replay_listings_show_control_characters_escaped() -> None:
    candidate = Candidate(
        id="c1", status="failed", attempts=3, worker_id=ESCAPES, error_message=ESCAPES,
        age_seconds=60.0, lease_seconds_left=None, lease_live=False, eligible=False,
    )  # fmt: skip
    plan = ReplayPlan(skipped=[(candidate, "status is failed: nothing to replay")])
    text = rendered(lambda out: (out.print(job_table("t", [candidate])), print_skipped(out, plan)))
    assert not CONTROL.search(text), repr(text)
