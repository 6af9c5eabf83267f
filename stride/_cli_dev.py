"""`stride dev`: a worker, an optional demo event stream and a view of the runs, in one process.

The view is either a rich live table redrawn four times a second (for a person at a
terminal) or one plain line per run change (`--no-live`, for logs, CI and tests). Both read
the store through the same `RunWatcher`, so what they show is what is committed, not what
this process believes it did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from stride._cli_commands import stop_on_signals
from stride._cli_db import open_app_store, redact
from stride._cli_render import counts_text, format_duration, format_time, runs_table
from stride._cli_watch import RunLine, RunWatcher, Snapshot
from stride._loader import load_app
from stride.app import Stride
from stride.errors import ConfigurationError
from stride.integrations import STRICT_ENV
from stride.stores.base import FINISHED_STATUSES, RunFilter, Store

log = logging.getLogger("stride.dev")

REFRESH_SECONDS = 0.25
LIVE_WINDOW = 15
"""Runs in the live table: as many as fit a terminal beside the header and footer."""
LINE_WINDOW = 100
"""Runs whose changes `--no-live` follows per refresh; more new runs per refresh than this
would go unreported, far beyond what a dev session produces."""

Demo = Callable[[Stride], Awaitable[None]]
DEV_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8288


@dataclass(frozen=True, slots=True)
class DevOptions:
    concurrency: int
    grace: float
    live: bool
    duration: float | None
    port: int | None = DEFAULT_HTTP_PORT


async def dev(args: argparse.Namespace) -> None:
    """Run APP's jobs (and its demo) with a view of the runs, until Ctrl-C or `--for`."""
    os.environ.setdefault(STRICT_ENV, "1")  # RLS strict mode: unguarded job queries raise
    app = load_app(args.app)
    demo = find_demo(args.app) if args.demo else None
    if args.duration is not None and args.duration <= 0:
        raise ConfigurationError(f"--for must be a positive number of seconds, "
                                 f"got {args.duration}")
    options = DevOptions(args.concurrency, args.grace, not args.no_live, args.duration,
                         None if args.no_http else args.port)
    try:
        store = await open_app_store(app)
        await _serve(app, store, demo, options)
    finally:
        await app.aclose()


def find_demo(app_path: str) -> Demo:
    """The `async def demo(jobs: Stride) -> None` defined (or imported) in APP's module."""
    module_name = app_path.partition(":")[0]
    candidate = getattr(importlib.import_module(module_name), "demo", None)
    if candidate is None or not inspect.iscoroutinefunction(candidate):
        raise ConfigurationError(
            f"--demo needs a coroutine function `async def demo(jobs: Stride) -> None` in "
            f"module {module_name!r}; it has {'none' if candidate is None else repr(candidate)}")
    demo: Demo = candidate
    return demo


async def _serve(app: Stride, store: Store, demo: Demo | None, options: DevOptions) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    if options.duration is not None:
        asyncio.get_running_loop().call_later(options.duration, stop.set)
    watcher = RunWatcher(store, RunFilter(), window=LIVE_WINDOW if options.live else LINE_WINDOW)
    started = time.monotonic()
    async with app.worker(concurrency=options.concurrency, grace=options.grace):
        demo_task = _start_demo(demo, app)
        http = _start_http(app, options.port, stop)
        try:
            if options.live:
                await _live_view(watcher, stop, _banner(app, options, demo is not None))
            else:
                await _line_view(watcher, stop)
        finally:
            stop.set()
            await _cancel(demo_task)
            if http is not None:
                await http
    final = await watcher.snapshot()
    label = f"stride dev ran {time.monotonic() - started:.1f} s; all runs"
    Console().print(counts_text(final.counts, capped=final.capped, label=label))


def _start_http(app: Stride, port: int | None, stop: asyncio.Event) -> asyncio.Task[None] | None:
    """The HTTP API and dashboard on 127.0.0.1:port, beside the worker (dev mode)."""
    if port is None:
        return None
    if not _port_is_free(DEV_HOST, port):
        log.warning("port %d is in use: no dashboard this time (use --port N, or --no-http)",
                    port)
        return None
    from stride.server import serve_http

    log.info("dashboard and API on http://%s:%d/", DEV_HOST, port)
    return asyncio.create_task(serve_http(app, stop=stop, host=DEV_HOST, port=port, dev=True),
                               name="stride-dev-http")


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _start_demo(demo: Demo | None, app: Stride) -> asyncio.Task[None] | None:
    if demo is None:
        return None

    async def guarded() -> None:
        try:
            await demo(app)
        except Exception:  # a bug in the demo must not stop the worker
            log.exception("the demo stopped with an error")

    return asyncio.create_task(guarded(), name="stride-dev-demo")


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


# -- the live table ------------------------------------------------------------


def _banner(app: Stride, options: DevOptions, with_demo: bool) -> Text:
    text = Text("stride dev", style="bold")
    text.append(f"  app {app.app_id}  ·  {redact(app.database_url)}  ·  "
                f"concurrency {options.concurrency}")
    if with_demo:
        text.append("  ·  demo events on", style="cyan")
    text.append("  ·  Ctrl-C to stop", style="dim")
    return text


def live_renderable(snapshot: Snapshot, banner: Text) -> Group:
    """Banner, the newest runs, and a footer with runs per status."""
    return Group(banner, runs_table(snapshot.runs, live=True),
                 counts_text(snapshot.counts, capped=snapshot.capped, label="all runs"))


async def _live_view(watcher: RunWatcher, stop: asyncio.Event, banner: Text) -> None:
    # log records go through rich's stderr proxy (see stride.logging.CurrentStderrHandler)
    # and print above the table instead of tearing it
    with Live(console=Console(), auto_refresh=False, redirect_stderr=True) as live:
        while not stop.is_set():
            live.update(live_renderable(await watcher.snapshot(), banner), refresh=True)
            await _sleep_unless(stop, REFRESH_SECONDS)


# -- plain lines ---------------------------------------------------------------


class LineReporter:
    """Turns successive snapshots into one line per run change, oldest change first."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[object, ...]] = {}
        self._first = True

    def changes(self, snapshot: Snapshot) -> list[str]:
        lines: list[str] = []
        for run in reversed(snapshot.runs):
            state = (run.status, run.step_id, run.step_status, run.attempts)
            quiet = self._first and run.status in FINISHED_STATUSES  # history, not news
            if self._seen.get(run.id) != state and not quiet:
                lines.append(describe(run))
            self._seen[run.id] = state
        visible = {run.id for run in snapshot.runs}
        self._seen = {key: value for key, value in self._seen.items() if key in visible}
        self._first = False
        return lines


def describe(run: RunLine) -> str:
    """`12:00:01 run 01J... process-context-file  failed  NonRetriableError: ...`."""
    head = f"{format_time(int(time.time() * 1000), date=False)} run {run.id} {run.job_id:<24} "
    head += f"{run.status:<9} "
    if run.status == "failed":
        return head + f"after {format_duration(run.duration_ms)}: {run.error}"
    if run.status in FINISHED_STATUSES:
        return head + f"in {format_duration(run.duration_ms)}, attempts {run.attempts}"
    if run.step_id is None:
        return head + f"({run.event_name})"
    if run.step_status == "retrying":
        return head + (f"step {run.step_id} attempt {run.attempts} failed, will retry: "
                       f"{run.step_error}")
    return head + f"step {run.step_id} {run.step_status}"


async def _line_view(watcher: RunWatcher, stop: asyncio.Event) -> None:
    reporter = LineReporter()
    while not stop.is_set():
        for line in reporter.changes(await watcher.snapshot(count=False)):
            print(line, flush=True)
        await _sleep_unless(stop, REFRESH_SECONDS)
