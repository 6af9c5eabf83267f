"""Waits: N runs each wait for its own event (match on data.id), then N matching events come.

    .venv/bin/python bench/waits.py --store sqlite [--waiters 100,10000] [--rate 500]

For each N in --waiters, on a fresh store with one worker process:
1. N `bench/wait` events start N runs; each reaches `step.wait_for_event("done",
   event="bench/done", match="data.id")` and suspends (status 'waiting', no worker held).
   Reported: how long until all N wait (registrations/s).
2. Dispatch rate with N waiting: --probe events named `bench/done` whose id nobody waits
   for, one `dispatch()` per event from --dispatchers concurrent tasks (median of 3 rounds).
   Each publish looks the waits of its name up through the (event name, match key) index,
   so this must not fall as N grows; it is printed next to the same rate on a store with
   no waits at all (0 waiters), and also measured with the worker stopped (the publish
   path alone: no claim after every commit competing for the lock or the CPU).
3. Resume latency: the N matching events at --rate per second (open loop); per event,
   the handler's first line after the wait (wall clock, same machine) minus t0, the wall
   clock just before `dispatch()`. It covers the publish that completes the wait and makes
   the run due, the worker noticing, the claim and the replay up to the wait.
Last line: `RESULT store=... waiters=... dispatch_per_s=... resume_p50_ms=... resume_p99_ms=...`
(one value per N, comma-separated, in --waiters order).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/waits.py`
    sys.path.insert(0, str(ROOT))

from bench import _raw  # noqa: E402
from bench._db import DEFAULT_POSTGRES_URL, Probe, Skip, drop_target, make_target  # noqa: E402
from stride import Context, Stride, _codec  # noqa: E402

WAIT_EVENT = "bench/wait"
DONE_EVENT = "bench/done"
SLEEP_EVENT = "bench/sleep"
SETTLE_TIMEOUT_SECONDS = 300.0


def build(database_url: str) -> Stride:
    """The app of the wait and sleep benchmarks."""
    app = Stride(app_id="bench-waits", database_url=database_url)

    @app.define_job(id="waiter", trigger=WAIT_EVENT, retries=0)
    async def waiter(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        found = await ctx.step.wait_for_event("done", event=DONE_EVENT, timeout="1h",
                                              match="data.id")
        return {"resumed_ns": time.time_ns(), "t0": found.data["t0"] if found else None}

    @app.define_job(id="sleeper", trigger=SLEEP_EVENT, retries=0)
    async def sleeper(ctx: Context[dict[str, Any]]) -> dict[str, Any]:
        if "until_ms" in ctx.event.data:
            until = datetime.fromtimestamp(ctx.event.data["until_ms"] / 1000, UTC)
            await ctx.step.sleep_until("nap", until)
        else:
            await ctx.step.sleep("nap", float(ctx.event.data.get("seconds", 1)))
        return {"woke_ns": time.time_ns()}

    return app


# -- the worker process --------------------------------------------------------------------

def serve(url: str, concurrency: int, stop: Event) -> None:
    """A worker process's main: run the bench app's worker until `stop` is set."""
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(url, concurrency, stop))


async def _serve(url: str, concurrency: int, stop: Event) -> None:
    app = build(url)
    async with app.worker(concurrency=concurrency):
        while not stop.is_set():  # noqa: ASYNC110 (a process-shared Event has no async wait)
            await asyncio.sleep(0.05)
    await app.aclose()


class WorkerProcesses:
    """`count` worker processes on `url` (spawned: nothing shared with the bench process)."""

    def __init__(self, url: str, count: int, concurrency: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._processes = [context.Process(target=serve, args=(url, concurrency, self._stop),
                                           name=f"bench-worker-{index}")
                           for index in range(count)]

    def __enter__(self) -> WorkerProcesses:
        for process in self._processes:
            process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(30)
            if process.is_alive():
                process.kill()


def wait_for_count(probe: Probe, sql: str, count: int, what: str) -> float:
    """Poll until `sql` counts `count`; returns the seconds it took."""
    began = time.monotonic()
    while int(probe.scalar(sql)) < count:
        if time.monotonic() - began > SETTLE_TIMEOUT_SECONDS:
            raise RuntimeError(f"{what}: not reached after {SETTLE_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - began


async def migrate(url: str) -> None:
    app = build(url)
    await app.store()
    await app.aclose()


def percentiles(values: list[float]) -> dict[int, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {50: statistics.median(values), 95: cuts[94], 99: cuts[98], 100: max(values)}


# -- the measurements ----------------------------------------------------------------------

async def start_waiters(url: str, count: int) -> None:
    app = build(url)
    for start in range(0, count, 1000):
        await app.dispatch_many([(WAIT_EVENT, {"id": f"w{index}"})
                                 for index in range(start, min(count, start + 1000))])
    await app.aclose()


async def dispatch_rate(url: str, events: int, dispatchers: int, tag: str) -> float:
    """Events/s of `events` single-event dispatch() calls from `dispatchers` tasks; their ids
    are waited for by nobody, so each publish looks waits up and finds none."""
    app = build(url)
    await app.store()
    queue = iter(range(events))

    async def dispatcher() -> None:
        for index in queue:
            await app.dispatch(DONE_EVENT, {"id": f"{tag}-{index}", "t0": 0})

    began = time.perf_counter()
    await asyncio.gather(*(dispatcher() for _ in range(dispatchers)))
    elapsed = time.perf_counter() - began
    await app.aclose()
    return events / elapsed


async def dispatch_matches(url: str, count: int, rate: float) -> None:
    """The event each waiter waits for, on an open-loop schedule of `rate` per second."""
    app = build(url)
    await app.store()
    pending: set[asyncio.Task[Any]] = set()
    began = time.perf_counter()
    for index in range(count):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(app.dispatch(DONE_EVENT, {"id": f"w{index}",
                                                             "t0": time.time_ns()}))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await app.aclose()


def resume_latencies(probe: Probe) -> list[float]:
    latencies = []
    for (output,) in probe.rows("SELECT output FROM runs WHERE job_id = 'waiter'"):
        result = _codec.loads(output)
        if result and result.get("t0"):
            latencies.append((result["resumed_ns"] - result["t0"]) / 1e6)
    return latencies


def measure(args: argparse.Namespace, waiters: int) -> dict[str, float]:
    """One fresh store with `waiters` waiting runs (0: the baseline, same worker running)."""
    target = make_target(args.store, args.postgres_url)
    try:
        asyncio.run(migrate(target.url))
        probe = Probe(target)
        with WorkerProcesses(target.url, args.workers, args.concurrency):
            wait_for_count(probe, "SELECT count(*) FROM workers", args.workers, "workers up")
            began = time.monotonic()
            asyncio.run(start_waiters(target.url, waiters))
            wait_for_count(probe, "SELECT count(*) FROM runs WHERE job_id = 'waiter' AND "
                           "status = 'waiting'", waiters, "runs waiting")
            setup = time.monotonic() - began
            time.sleep(1.0)  # the last registrations' second transactions (PostgreSQL)
        # the publish path alone (no worker reacting to each commit), then with the worker
        alone = statistics.median(asyncio.run(dispatch_rate(
            target.url, args.probe, args.dispatchers, f"alone{index}")) for index in range(3))
        with WorkerProcesses(target.url, args.workers, args.concurrency):
            rate = statistics.median(asyncio.run(dispatch_rate(
                target.url, args.probe, args.dispatchers, f"probe{index}")) for index in range(3))
            asyncio.run(dispatch_matches(target.url, waiters, args.rate))
            wait_for_count(probe, "SELECT count(*) FROM runs WHERE job_id = 'waiter' AND "
                           "status = 'completed'", waiters, "waiters resumed")
        latencies = resume_latencies(probe)
        probe.close()
    finally:
        drop_target(target)
    if not waiters:
        print(f"     0 waiters: dispatch {rate:,.0f} events/s with the worker running, "
              f"{alone:,.0f} without ({args.dispatchers} concurrent dispatch() calls of one "
              f"event, median of 3 x {args.probe} events)")
        return {"rate": rate, "alone": alone}
    p = percentiles(latencies)
    print(f"{waiters:>6} waiters: all waiting {setup:6.2f} s after their dispatch "
          f"({waiters / setup:,.0f} registrations/s); dispatch {rate:,.0f} events/s with "
          f"the worker running, {alone:,.0f} without")
    print(f"{'':>15}resume after the matching dispatch ({args.rate:g}/s): p50 {p[50]:.1f} ms"
          f"  p95 {p[95]:.1f} ms  p99 {p[99]:.1f} ms  max {p[100]:.1f} ms")
    return {"rate": rate, "alone": alone, "p50": p[50], "p99": p[99]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--waiters", default="100,10000", help="comma-separated counts")
    parser.add_argument("--probe", type=int, default=2000,
                        help="events in each of the 3 rate probes (the median is reported)")
    parser.add_argument("--dispatchers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=500.0,
                        help="matching events per second (resume latency)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    return parser


def main() -> int:
    args = _parser().parse_args()
    counts = [int(n) for n in args.waiters.split(",")]
    print(f"stride waits: store={args.store} waiters={counts} workers={args.workers} "
          f"(concurrency {args.concurrency}) pid={os.getpid()}")
    try:
        print(_raw.describe(_raw.measure_apart(args.store, args.postgres_url)))
    except Skip as exc:
        print(f"SKIP store={args.store}: {exc}")
        return 0
    baseline = measure(args, 0)
    results = [measure(args, count) for count in counts]
    joined = {key: ",".join(f"{r[key]:.0f}" if key in ("rate", "alone") else f"{r[key]:.1f}"
                            for r in results) for key in ("rate", "alone", "p50", "p99")}
    print(f"RESULT store={args.store} waiters={args.waiters} dispatch_per_s={joined['rate']} "
          f"dispatch_alone_per_s={joined['alone']} no_waits_dispatch_per_s="
          f"{baseline['rate']:.0f},{baseline['alone']:.0f} resume_p50_ms={joined['p50']} "
          f"resume_p99_ms={joined['p99']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
