"""``python -m devstack up``: the local Supabase + Cloudinary + generator stack, until Ctrl-C.

Prints the environment a worker needs and the admin (fault switch) endpoints. Everything it
started (the embedded PostgreSQL and its temp directory included) is gone when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from devstack.stack import DevStack


async def up(args: argparse.Namespace) -> None:
    async with DevStack(
        delivery=args.delivery,
        port=args.port,
        cloudinary_port=args.cloudinary_port,
        generator_port=args.generator_port,
    ) as stack:
        print("devstack is up. The environment for a worker (or `image-worker status`):\n")
        for name, value in stack.env.items():
            print(f"export {name}='{value}'")
        print(f"\nPostgreSQL: {stack.dsn}")
        print(f"Realtime delivery: {stack.delivery}")
        print("\nAdmin endpoints (fault switches; JSON bodies):")
        for endpoint in stack.admin_endpoints():
            print(f"  {endpoint}")
        print("\nInsert a job:")
        print(
            f"  curl -s {stack.url}/rest/v1/jobs -H 'apikey: {stack.keys.service_role_key}' "
            "-H 'Content-Type: application/json' -d '{\"prompt\": \"a red fox\"}'"
        )
        print("\nCtrl-C stops everything.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        print("stopping…", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    command = sub.add_parser("up", help="start the stack and print its environment")
    command.add_argument("--delivery", choices=("fast", "realistic"), default="fast",
                         help="Realtime delivery: at once, or with the real server's polling delays")  # fmt: skip
    command.add_argument("--port", type=int, default=54321, help="Supabase API port (0: any)")
    command.add_argument("--cloudinary-port", type=int, default=0)
    command.add_argument("--generator-port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(up(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
