"""Keyed concurrency: the cost of a per-key limit, against the same workload without one.

    .venv/bin/python bench/keyed_concurrency.py --store sqlite [--runs 20000] [--keys 1000]
        [--limit 1] [--workers 2] [--concurrency 100] [--rounds 3] [--explain]

Two drains of the same workload, each on a fresh database, by `--workers` real
`python -m stride worker` processes that are up (registered) before anything is dispatched:
1. unlimited: `--runs` runs of a job with one no-op step;
2. keyed: the same job with `concurrency=Concurrency(limit=--limit, key="event.data.key")`,
   each event's key drawn at random among `--keys` values (so claims meet full keys and
   park their runs, and parked runs come back as slots free up).
Throughput is runs / (max(ended_at) - min(created_at)) read from the store, as in
bench/throughput.py (the figure; it includes the publish, whose transaction hides the runs
until it commits); also printed from the first run's start (the drain alone). Printed:
both figures, their ratio, the store's raw commit rate (bench/_raw.py), how many runs
were parked at least once, and the peak number of runs that held one key at once (must
not exceed the limit). `--rounds N` repeats the pair N times, interleaved (unlimited,
keyed, unlimited, ...) so both see the same background load, and prints each round's
ratio and their median. Last line: `RESULT ...`.

`--explain` drains nothing: it brings a fresh store to the keyed drain's state (the runs
queued, workers' slots leased, full keys' runs parked), records one keyed claim and prints
the plan of each of its statements (EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL, EXPLAIN QUERY
PLAN on SQLite): see bench/keyed_explain.py.

This module is also the workers' app (`bench.keyed_concurrency:jobs`): the mode comes from
STRIDE_BENCH_KEYED and STRIDE_BENCH_KEY_LIMIT in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/keyed_concurrency.py`
    sys.path.insert(0, str(ROOT))

from bench import _raw  # noqa: E402
from bench._db import DEFAULT_POSTGRES_URL, Probe, Skip, Target, drop_target, make_target  # noqa: E402
from stride import Concurrency, Context, Stride  # noqa: E402

EVENT = "bench/keyed"
JOB = "keyed-work"
KEYED_ENV = "STRIDE_BENCH_KEYED"
LIMIT_ENV = "STRIDE_BENCH_KEY_LIMIT"
APP_PATH = "bench.keyed_concurrency:jobs"
DRAIN_TIMEOUT_SECONDS = 600.0


async def _nothing() -> None:
    return None


def build(database_url: str | None = None, *, keyed: bool | None = None,
          limit: int | None = None) -> Stride:
    """The benchmark's app: one job with one no-op step, limited per key if `keyed`."""
    app = Stride(app_id="bench-keyed", database_url=database_url)
    keyed = os.environ.get(KEYED_ENV) == "1" if keyed is None else keyed
    limit = int(os.environ.get(LIMIT_ENV, "1")) if limit is None else limit
    options: dict[str, Any] = (
        {"concurrency": Concurrency(limit=limit, key="event.data.key")} if keyed else {})

    @app.define_job(id=JOB, trigger=EVENT, retries=0, **options)
    async def work(ctx: Context[dict[str, Any]]) -> None:
        await ctx.step.run("noop", _nothing)

    return app


jobs = build()


@dataclass(frozen=True, slots=True)
class Drain:
    jobs_per_s: float
    drain_jobs_per_s: float
    """From the first run's start: without the publish (whose transaction hides the runs)."""
    dispatch_s: float
    parked: int
    peak_per_key: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=1, help="runs per key at once")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="unlimited/keyed pairs, interleaved; the median ratio is the figure")
    parser.add_argument("--explain", action="store_true",
                        help="print the keyed claim's plans at this scale instead of draining")
    return parser


def _start_workers(target: Target, args: argparse.Namespace,
                   keyed: bool) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "STRIDE_DATABASE_URL": target.url, KEYED_ENV: "1" if keyed else "0",
           LIMIT_ENV: str(args.limit)}
    return [subprocess.Popen(
        [sys.executable, "-m", "stride", "--log-level", "WARNING", "worker", APP_PATH,
         "--concurrency", str(args.concurrency)], cwd=ROOT, env=env)
        for _ in range(args.workers)]


def _wait_registered(probe: Probe, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while probe.workers() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not register within {timeout} s")
        time.sleep(0.05)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=60)


async def _dispatch(target: Target, args: argparse.Namespace, keyed: bool) -> float:
    app = build(target.url, keyed=keyed, limit=args.limit)
    await app.store()
    rng = random.Random(args.seed)
    batch = [(EVENT, {"key": f"k{rng.randrange(args.keys)}"}) for _ in range(args.runs)]
    started = time.perf_counter()
    await app.dispatch_many(batch)
    took = time.perf_counter() - started
    await app.aclose()
    return took


async def _migrate(target: Target) -> None:
    app = build(target.url, keyed=False)
    await app.store()
    await app.aclose()


def _wait_drained(probe: Probe, runs: int) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while probe.finished(JOB) < runs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained after {DRAIN_TIMEOUT_SECONDS} s: "
                               f"{probe.status_counts()}")
        time.sleep(0.05)


def _peak_per_key(probe: Probe) -> int:
    """The most runs of one key whose [started_at, ended_at) overlapped, over all keys (the
    key read back from each run's event)."""
    rows = probe.rows("SELECT e.data, r.started_at, r.ended_at FROM runs r JOIN events e "
                      f"ON e.id = r.event_id WHERE r.job_id = '{JOB}'")
    edges: dict[str, list[tuple[int, int]]] = {}
    for data, start, end in rows:
        edges.setdefault(json.loads(data)["key"], []).extend([(int(start), 1), (int(end), -1)])
    peak = 0
    for key_edges in edges.values():
        current = 0
        for _, change in sorted(key_edges):  # an end sorts before a start at the same ms
            current += change
            peak = max(peak, current)
    return peak


def drain(args: argparse.Namespace, keyed: bool) -> Drain:
    target = make_target(args.store, args.postgres_url)
    try:
        asyncio.run(_migrate(target))
        probe = Probe(target)
        workers = _start_workers(target, args, keyed)
        try:
            _wait_registered(probe, args.workers)
            dispatch_s = asyncio.run(_dispatch(target, args, keyed))
            _wait_drained(probe, args.runs)
        finally:
            _stop(workers)
        first, last = probe.span_ms(JOB)
        started = int(probe.scalar(f"SELECT min(started_at) FROM runs WHERE job_id = '{JOB}'"))
        parked = int(probe.scalar(f"SELECT count(*) FROM runs WHERE job_id = '{JOB}' "
                                  "AND reason LIKE 'concurrency:%'"))
        failed = probe.status_counts().get("failed", 0)
        if failed:
            print(f"WARNING: {failed} runs failed")
        result = Drain(args.runs / (max(last - first, 1) / 1000),
                       args.runs / (max(last - started, 1) / 1000), dispatch_s, parked,
                       _peak_per_key(probe) if keyed else 0)
        probe.close()
        return result
    finally:
        drop_target(target)


def main() -> int:
    args = _parser().parse_args()
    print(f"stride keyed concurrency: store={args.store} runs={args.runs} keys={args.keys} "
          f"limit={args.limit} per key, workers={args.workers} x {args.concurrency}")
    if args.explain:
        from bench import keyed_explain

        return keyed_explain.main(args)
    try:
        raw = _raw.measure_apart(args.store, args.postgres_url)
    except Skip as exc:
        print(f"SKIP store={args.store}: {exc}")
        return 0
    print(_raw.describe(raw))
    ratios = [_round(args, index, raw[0].commits_per_s) for index in range(args.rounds)]
    median = statistics.median(ratios)
    print(f"ratio keyed / unlimited per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {median:.3f} (target >= 0.75)")
    print(f"RESULT store={args.store} runs={args.runs} keys={args.keys} limit={args.limit} "
          f"ratio_median={median:.3f} ratios={','.join(f'{r:.3f}' for r in ratios)} "
          f"raw_commits_per_s={raw[0].commits_per_s:.0f}")
    return 0


def _round(args: argparse.Namespace, index: int, raw_commits_per_s: float) -> float:
    """One unlimited drain, then one keyed drain; their ratio."""
    plain = drain(args, keyed=False)
    print(f"round {index + 1}: unlimited: {plain.jobs_per_s:,.0f} jobs/s "
          f"(dispatch {plain.dispatch_s:.2f} s; from the first start "
          f"{plain.drain_jobs_per_s:,.0f} jobs/s)")
    keyed = drain(args, keyed=True)
    print(f"round {index + 1}: keyed:     {keyed.jobs_per_s:,.0f} jobs/s "
          f"(dispatch {keyed.dispatch_s:.2f} s; from the first start "
          f"{keyed.drain_jobs_per_s:,.0f} jobs/s); {keyed.parked} runs were parked at least "
          f"once; at most {keyed.peak_per_key} runs of one key at once (limit {args.limit})")
    if keyed.peak_per_key > args.limit:
        print(f"ERROR: {keyed.peak_per_key} runs of one key ran at once (limit {args.limit})")
    ratio = keyed.jobs_per_s / plain.jobs_per_s
    print(f"round {index + 1}: ratio keyed / unlimited = {ratio:.3f}; jobs/s / raw commits/s: "
          f"unlimited {plain.jobs_per_s / raw_commits_per_s:.3f}, "
          f"keyed {keyed.jobs_per_s / raw_commits_per_s:.3f}")
    return ratio


if __name__ == "__main__":
    sys.exit(main())
