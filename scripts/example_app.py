"""The example app (examples/web) against the devstack, with a worker, in one command.

    npm ci --prefix examples/web                # once: supabase-js from npm
    uv run python scripts/example_app.py        # then open http://127.0.0.1:8000

Starts the devstack (Supabase stand-ins on :54321, Cloudinary and the generator stand-ins), a
worker in this process (realtime mode), seeds two users, and serves examples/web with a
``config.js`` that points it at the stack. Generations take ``--generation-seconds`` (default 2)
so the progress is there to see. Ctrl-C stops everything.

The page is the same one you would serve against a real project (see examples/web/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "examples" / "web"
sys.path.insert(0, str(REPO))

from devstack.example_site import example_site  # noqa: E402
from devstack.serve import serve  # noqa: E402
from devstack.stack import DevStack  # noqa: E402

USERS = {"alice@example.com": "alice-password", "bob@example.com": "bob-password"}


async def main(args: argparse.Namespace) -> None:
    if not (WEB / "node_modules" / "@supabase" / "supabase-js").is_dir():
        sys.exit("supabase-js is not installed: run `npm ci --prefix examples/web` first")
    from worker.engine.app import Worker
    from worker.settings import Settings

    async with DevStack(port=args.port) as stack:
        for email, password in USERS.items():
            stack.create_user(email, password)
        stack.generator.default_behaviour = f"slow:{args.generation_seconds}"
        env = {
            **stack.env,
            "WORKER_MODE": "realtime",
            "WORKER_CONCURRENCY": "4",
            "HEALTH_PORT": "0",
        }
        fields = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
        worker = Worker(Settings(_env_file=None, **fields))
        worker_task = asyncio.create_task(worker.run())
        runner, page_url = await serve(
            example_site(stack.url, stack.keys.anon_key), args.host, args.web_port
        )
        try:
            print(f"\nThe example app: {page_url}/")
            print("Sign in as " + " or ".join(f"{e} / {p}" for e, p in USERS.items()))
            print("or continue without an account (anonymous sign-in).")
            print(f"\nSupabase (devstack): {stack.url}   anon key: {stack.keys.anon_key}")
            print("Prompt tokens such as [gen:status:400] make the generator stand-in fail.")
            print("\nCtrl-C stops everything.", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await asyncio.wait(
                [asyncio.create_task(stop.wait()), worker_task], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker_task, 30)
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=54321, help="the Supabase stand-in's port")
    parser.add_argument("--web-port", type=int, default=8000, help="the page's port")
    parser.add_argument("--generation-seconds", type=float, default=2.0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
