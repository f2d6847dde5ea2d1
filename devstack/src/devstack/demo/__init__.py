"""``image-worker demo``: the whole pipeline on an embedded local stack, no credentials needed.

    run(DemoOptions(jobs=12, report=Path("demo-report/index.html")))  # returns the exit code

What happens, in order:

1. the devstack starts in this process (an embedded PostgreSQL, PostgREST + Realtime, Cloudinary
   and generator stand-ins);
2. a real ``Worker`` starts next to it in realtime mode, its log going to a file (the terminal is
   for the demo's own story);
3. sample jobs are inserted one by one, the way an app would: varied prompts and aspect ratios,
   every kind of generator answer, one cold-start endpoint and one bad input;
4. halfway through, the Realtime socket is cut and reconnects are refused for a moment, so the
   fallback polling and the catch-up after recovery can be watched while jobs keep coming;
5. every job's state changes are printed as they happen (a live table too, on a terminal);
6. a summary table, and an HTML report next to the log: thumbnails and a timeline chart.

The exit code is 0 only if every job ended as designed: the bad one ``failed`` with its message,
all others ``complete`` with both URLs. The demo reads nothing from the environment or ``.env``:
a newcomer's real ``SUPABASE_URL`` must never receive demo jobs.

The parts: ``samples`` (the sample jobs), ``scenario`` (the run), ``monitor`` (watching and
narrating, the live view), ``report`` (summary, HTML report and timeline). The ``image-worker
demo`` command imports this package only when it runs: the runtime image has no devstack.
"""

from devstack.demo.scenario import DemoOptions, run

__all__ = ["DemoOptions", "run"]
