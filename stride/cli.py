"""The `stride` command. Thin: parse arguments, then call the runtime.

Every StrideError ends the command with one line on stderr and exit status 2; tracebacks
are for bugs only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from stride._loader import load_app
from stride.app import Stride
from stride.errors import StrideError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stride", description="Durable background jobs.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run a worker for APP")
    worker.add_argument("app", metavar="APP", help="import path, e.g. examples.porygon.app:jobs")
    worker.add_argument("--concurrency", type=int, default=10)
    worker.add_argument("--lease", type=float, default=30.0, help="lease seconds")
    worker.add_argument("--grace", type=float, default=10.0, help="shutdown grace seconds")
    migrate = commands.add_parser("migrate", help="create or upgrade the store's schema")
    migrate.add_argument("app", metavar="APP", nargs="?", help="APP whose database to migrate")
    migrate.add_argument("--database-url", help="instead of APP: the database URL")
    return parser


async def _run_worker(app: Stride, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    handle = app.worker(concurrency=args.concurrency, lease=args.lease, grace=args.grace)
    try:
        await handle.run(stop)
    finally:
        await app.aclose()


async def _migrate(args: argparse.Namespace) -> None:
    if args.app:
        app = load_app(args.app)
    else:
        app = Stride(app_id="stride-migrate", database_url=args.database_url)
    await app.store()
    await app.aclose()
    print(f"migrated {app.database_url}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "worker":
            asyncio.run(_run_worker(load_app(args.app), args))
        elif args.command == "migrate":
            asyncio.run(_migrate(args))
    except StrideError as exc:
        print(f"stride: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
