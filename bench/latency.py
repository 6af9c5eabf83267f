"""Latency: one idle worker in another process; dispatch events one by one at a fixed rate.

    .venv/bin/python bench/latency.py --store sqlite [--events 500] [--rate 50]

Each event triggers one run of `ping`, a step-less job whose handler's first line reads
the wall clock and returns it. Per event, from `t0` = the wall clock just before the
bench calls `dispatch()` (an open-loop schedule: a late dispatch does not delay the next):
- start: the handler's first line (`time.time_ns()` in the worker process; same machine,
  same clock) minus t0. It covers the dispatch commit, the worker noticing it (SQLite:
  data_version polled every 5 ms; PostgreSQL: LISTEN/NOTIFY), the claim transaction and
  handing the run to the handler.
- finish: the run's `ended_at` (epoch ms, set by the completion statement inside the
  transaction that commits it, so at most ~1 ms + one commit early) minus t0.
- dispatch: how long the `dispatch()` call itself took (until its commit).
Last line: `RESULT store=... start_p50_ms=... start_p99_ms=... finish_p50_ms=... finish_p99_ms=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/latency.py`
    sys.path.insert(0, str(ROOT))

from bench import _raw  # noqa: E402
from bench._db import DEFAULT_POSTGRES_URL, Probe, Skip, Target, drop_target, make_target  # noqa: E402
from bench._workers import WorkerPool  # noqa: E402
from stride import _codec  # noqa: E402

DRAIN_TIMEOUT_SECONDS = 120.0
WARM_UP_EVENTS = 20


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    return parser


async def _dispatch_at_rate(target: Target, events: int, rate: float,
                            ) -> tuple[dict[str, int], list[float]]:
    """Dispatch `events` pings on an open-loop schedule; (event id -> t0 ns, call seconds)."""
    from bench.apps import PING_EVENT, build

    app = build(target.url)
    await app.store()
    for index in range(WARM_UP_EVENTS):  # open connections and caches on both sides
        await app.dispatch(PING_EVENT, {"warm_up": index})
    await asyncio.sleep(0.5)
    sent: dict[str, int] = {}
    calls: list[float] = []
    start = time.perf_counter()
    for index in range(events):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0, began = time.time_ns(), time.perf_counter()
        [event_id] = await app.dispatch(PING_EVENT, {"i": index})
        calls.append(time.perf_counter() - began)
        sent[event_id] = t0
    await app.aclose()
    return sent, calls


def _wait_finished(probe: Probe, count: int) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while probe.finished("ping") < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"pings not finished after {DRAIN_TIMEOUT_SECONDS} s")
        time.sleep(0.05)


def _latencies(probe: Probe, sent: dict[str, int]) -> tuple[list[float], list[float]]:
    """Per measured event: (dispatch-to-start ms, dispatch-to-finish ms)."""
    starts, finishes = [], []
    for event_id, output, ended_at in probe.ping_timings():
        t0 = sent.get(event_id)
        if t0 is None or output is None or ended_at is None:
            continue  # a warm-up event
        starts.append((_codec.loads(output)["started_ns"] - t0) / 1e6)
        finishes.append(ended_at - t0 / 1e6)
    return starts, finishes


def _percentiles(values: list[float]) -> dict[int, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {50: statistics.median(values), 95: cuts[94], 99: cuts[98]}


def _print_row(name: str, values: list[float]) -> dict[int, float]:
    p = _percentiles(values)
    print(f"{name:<22} p50 {p[50]:7.2f} ms   p95 {p[95]:7.2f} ms   p99 {p[99]:7.2f} ms   "
          f"max {max(values):7.2f} ms")
    return p


def run(args: argparse.Namespace, target: Target) -> None:
    print(_raw.describe(_raw.measure(target)))
    from bench.throughput import _migrate

    asyncio.run(_migrate(target))
    probe = Probe(target)
    pool = WorkerPool(target.url, 1, args.concurrency)
    try:
        pool.start(probe)
        sent, calls = asyncio.run(_dispatch_at_rate(target, args.events, args.rate))
        _wait_finished(probe, args.events + WARM_UP_EVENTS)
    finally:
        pool.stop()
    starts, finishes = _latencies(probe, sent)
    probe.close()
    print(f"{len(starts)} events at {args.rate:g}/s, one idle worker process "
          f"(concurrency {args.concurrency}); t0 = just before dispatch()")
    _print_row("dispatch() call", [c * 1000 for c in calls])
    start = _print_row("dispatch -> handler", starts)
    finish = _print_row("dispatch -> ended_at", finishes)
    print(f"RESULT store={args.store} start_p50_ms={start[50]:.2f} start_p99_ms={start[99]:.2f} "
          f"finish_p50_ms={finish[50]:.2f} finish_p99_ms={finish[99]:.2f}")


def main() -> int:
    args = _parser().parse_args()
    print(f"stride latency: store={args.store} events={args.events} rate={args.rate:g}/s")
    try:
        target = make_target(args.store, args.postgres_url)
    except Skip as exc:
        print(f"SKIP store={args.store}: {exc}")
        return 0
    try:
        run(args, target)
    finally:
        drop_target(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
