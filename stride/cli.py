"""The `stride` command. Thin: parse arguments, then call the runtime.

Every StrideError ends the command with one line on stderr and exit status 2; tracebacks
are for bugs only. The commands live in `_cli_commands` (one-shot) and `_cli_dev` (the
dev loop); tables are drawn by `_cli_render`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from stride import _cli_commands, _cli_dev
from stride._cli_db import DEFAULT_BUSY_TIMEOUT
from stride.errors import StrideError
from stride.logging import LOG_FORMATS, LOG_LEVELS, configure_logging
from stride.stores.base import RUN_STATUSES

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, None]]
APP_HELP = "import path of the app, e.g. examples.porygon.app:jobs"
DB_HELP = ("database URL (default: STRIDE_DATABASE_URL, else APP's, else "
           "sqlite:///.stride/stride.db)")
DEMO_HELP = ("also dispatch example events: calls `async def demo(jobs: Stride) -> None` "
             "from APP's module (cancelled on exit)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stride", description="Durable background jobs.")
    _add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_worker, _add_dev, _add_serve, _add_send, _add_runs, _add_run, _add_cancel,
                _add_replay, _add_audit, _add_migrate):
        sub = add(commands)
        _add_common(sub, top=False)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before and after the command (`stride --log-level DEBUG dev APP` and
    `stride dev APP --log-level DEBUG`); only the top level holds the defaults, so a value
    given before the command is not reset by the command's parser."""

    def given(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        default=given("INFO"), metavar="LEVEL",
                        help="DEBUG, INFO, WARNING or ERROR (DEBUG shows every run change)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=given("text"),
                        help="text for people, json for log collectors (one object a line)")


def _add_busy_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--busy-timeout", type=float, default=DEFAULT_BUSY_TIMEOUT,
                        metavar="S", help="SQLite: seconds to wait for another process's lock")


def _add_worker(commands: Any) -> argparse.ArgumentParser:
    worker: argparse.ArgumentParser = commands.add_parser(
        "worker", help="run a worker for APP until SIGINT/SIGTERM")
    worker.add_argument("app", metavar="APP", help=APP_HELP)
    worker.add_argument("--concurrency", type=int, default=10, help="runs at a time")
    worker.add_argument("--lease", type=float, default=30.0, help="lease seconds")
    worker.add_argument("--grace", type=float, default=10.0, help="shutdown grace seconds")
    worker.add_argument("--retention", default="7d",
                        help="prune finished runs and old events after this long (default 7d)")
    worker.set_defaults(handler=_cli_commands.worker)
    return worker


def _add_dev(commands: Any) -> argparse.ArgumentParser:
    dev: argparse.ArgumentParser = commands.add_parser(
        "dev", help="worker + live view of runs in one process (Ctrl-C stops)",
        description="Run APP's jobs on its store (SQLite by default) and show runs and steps "
                    "as they happen.")
    dev.add_argument("app", metavar="APP", help=APP_HELP)
    dev.add_argument("--demo", action="store_true", help=DEMO_HELP)
    dev.add_argument("--concurrency", type=int, default=10, help="runs at a time")
    dev.add_argument("--grace", type=float, default=5.0, help="shutdown grace seconds")
    dev.add_argument("--no-live", action="store_true",
                     help="print one line per run change instead of a live table")
    dev.add_argument("--for", dest="duration", type=float, metavar="SECONDS",
                     help="stop after this many seconds")
    dev.add_argument("--port", type=int, default=_cli_dev.DEFAULT_HTTP_PORT,
                     help="dashboard and HTTP API on 127.0.0.1:PORT (default 8288)")
    dev.add_argument("--no-http", action="store_true", help="no dashboard or HTTP API")
    dev.set_defaults(handler=_cli_dev.dev)
    return dev


def _add_serve(commands: Any) -> argparse.ArgumentParser:
    serve: argparse.ArgumentParser = commands.add_parser(
        "serve", help="HTTP API, event ingestion and dashboard (workers elsewhere)",
        description="Serve the HTTP API and dashboard for APP. Needs event and API keys "
                    "(--event-key/--api-key or STRIDE_EVENT_KEYS/STRIDE_API_KEYS, "
                    "comma-separated) unless --dev.")
    serve.add_argument("app", metavar="APP", help=APP_HELP)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=_cli_dev.DEFAULT_HTTP_PORT)
    serve.add_argument("--event-key", action="append", default=[], metavar="KEY")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY")
    serve.add_argument("--dev", action="store_true", help="no keys; binds 127.0.0.1 only")
    serve.add_argument("--worker", action="store_true", help="also run an in-process worker")
    serve.set_defaults(handler=_cli_commands.serve)
    return serve


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", metavar="APP", help=APP_HELP)
    parser.add_argument("--database-url", metavar="URL", help=DB_HELP)


def _add_send(commands: Any) -> argparse.ArgumentParser:
    send: argparse.ArgumentParser = commands.add_parser(
        "send", help="dispatch one event and print its id",
        description="Dispatch one event. With --app the event triggers APP's jobs; without "
                    "it, the event is stored with no runs.")
    send.add_argument("name", metavar="NAME", help="event name, e.g. context/file.uploaded")
    send.add_argument("--data", default="{}", metavar="JSON", help="event data (a JSON object)")
    send.add_argument("--user", metavar="JSON", help="who caused the event (a JSON object)")
    send.add_argument("--id", metavar="ID", help="event id (deduplicates repeated sends)")
    _add_database_options(send)
    send.set_defaults(handler=_cli_commands.send)
    return send


def _add_audit(commands: Any) -> argparse.ArgumentParser:
    audit: argparse.ArgumentParser = commands.add_parser(
        "audit", help="list RLS bypasses, newest first: tag, job, run, step, outcome")
    audit.add_argument("--run", metavar="ID", help="only this run's bypasses")
    audit.add_argument("--tag", metavar="TAG", help="only bypasses with this tag")
    audit.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _add_database_options(audit)
    _add_busy_timeout(audit)
    audit.set_defaults(handler=_cli_commands.audit)
    return audit


def _add_runs(commands: Any) -> argparse.ArgumentParser:
    runs: argparse.ArgumentParser = commands.add_parser("runs", help="list the newest runs")
    runs.add_argument("--job", metavar="JOB", help="only this job id")
    runs.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status")
    runs.add_argument("--since", metavar="DURATION", help="only runs created since, e.g. 10m")
    runs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    _add_database_options(runs)
    _add_busy_timeout(runs)
    runs.set_defaults(handler=_cli_commands.runs)
    return runs


def _add_run(commands: Any) -> argparse.ArgumentParser:
    run: argparse.ArgumentParser = commands.add_parser(
        "run", help="show one run: event, output or error, steps and attempts")
    run.add_argument("run_id", metavar="ID", help="the run id")
    run.add_argument("--tracebacks", action="store_true",
                     help="also print the traceback of every failed step attempt")
    _add_database_options(run)
    _add_busy_timeout(run)
    run.set_defaults(handler=_cli_commands.run)
    return run


def _add_cancel(commands: Any) -> argparse.ArgumentParser:
    cancel: argparse.ArgumentParser = commands.add_parser(
        "cancel", help="cancel a run, or every unfinished run of a job (--job)",
        description="Cancel one run (a running one stops before its next step), or with "
                    "--job every unfinished run of that job created in the window.")
    cancel.add_argument("run_id", metavar="ID", nargs="?", help="the run id")
    cancel.add_argument("--job", metavar="JOB", help="instead of one run: this job's runs")
    cancel.add_argument("--since", metavar="DURATION", help="with --job: created since, e.g. 10m")
    cancel.add_argument("--until", metavar="DURATION",
                        help="with --job: created before this long ago, e.g. 2m")
    cancel.add_argument("--reason", default="cancelled from the command line",
                        help="recorded as the run's error message")
    _add_database_options(cancel)
    cancel.set_defaults(handler=_cli_commands.cancel)
    return cancel


def _add_replay(commands: Any) -> argparse.ArgumentParser:
    replay: argparse.ArgumentParser = commands.add_parser(
        "replay", help="start a new run of a run's job with the same event; prints its id")
    replay.add_argument("run_id", metavar="ID", help="the run to replay")
    _add_database_options(replay)
    replay.set_defaults(handler=_cli_commands.replay)
    return replay


def _add_migrate(commands: Any) -> argparse.ArgumentParser:
    migrate: argparse.ArgumentParser = commands.add_parser(
        "migrate", help="create or upgrade the store's schema")
    migrate.add_argument("app", metavar="APP", nargs="?", help="APP whose database to migrate")
    migrate.add_argument("--database-url", metavar="URL", help="instead of APP's: this URL")
    _add_busy_timeout(migrate)
    migrate.set_defaults(handler=_cli_commands.migrate)
    return migrate


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `stride` and `python -m stride`; returns the exit status."""
    args = _parser().parse_args(argv)
    handler: Command = args.handler
    try:
        configure_logging(args.log_level, args.log_format)
        asyncio.run(handler(args))
    except StrideError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"stride: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        _exit_if_step_bodies_linger()
    return 0


def _exit_if_step_bodies_linger() -> None:
    """Leave now if a step body is still running after the worker stopped.

    Its run was given back (or its lease expires), so another worker resumes it; waiting
    for the thread would keep a stopping worker alive past its grace period.
    """
    lingering = [t for t in threading.enumerate()
                 if t.name.startswith("stride-handler") and t.is_alive()]
    if lingering:
        logging.getLogger("stride.worker").warning(
            "exiting with %d step bodies still running; their runs resume elsewhere",
            len(lingering))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
