"""Throughput: dispatch N events in one `dispatch_many`, drain them with worker processes.

    .venv/bin/python bench/throughput.py --store sqlite [--events 10000] [--steps 1]
        [--workers 2] [--concurrency 200] [--cli] [--profile DIR]

Workers start first and wait idle (registered in the store), so the drain measures the
engine, not interpreter start-up. Each event triggers one run of `noop`, which calls
`--steps` no-op async steps. Figures:
- dispatch_s: wall time of the one `dispatch_many` call (validation, ids, one transaction).
- jobs_per_s: N / (max(ended_at) - min(created_at)) read from the store: from the dispatch
  transaction to the last completion commit. The wall figure (from the call to the last
  ended_at) is printed too.
- writes per job: transactions and rows the SQLite writers committed (sqlite3 total_changes
  of each process's writer connection), or on PostgreSQL the rows inserted/updated per table
  from pg_stat_user_tables; plus the rows each table holds at the end.
Last line: `RESULT store=... jobs_per_s=... dispatch_s=... raw_commits_per_s=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/throughput.py`
    sys.path.insert(0, str(ROOT))

from bench import _raw  # noqa: E402
from bench._db import DEFAULT_POSTGRES_URL, Probe, Skip, Target, drop_target, make_target  # noqa: E402
from bench._workers import WorkerPool  # noqa: E402

DRAIN_TIMEOUT_SECONDS = 600.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--step-ms", type=float, default=0.0,
                        help="each step awaits asyncio.sleep for this long (I/O-like work)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--cli", action="store_true",
                        help="run `python -m stride worker` processes (no write counters)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() in each worker once started (not with --cli)")
    parser.add_argument("--profile", metavar="DIR",
                        help="record each worker with py-spy into DIR (collapsed stacks)")
    return parser


async def _migrate(target: Target) -> None:
    """Create the schema before the workers start (so the probe can count them)."""
    from bench.apps import build

    app = build(target.url)
    await app.store()
    await app.aclose()


async def _dispatch(target: Target, events: int, steps: int,
                    step_ms: float) -> tuple[float, float]:
    """Dispatch the batch in one call; (wall start epoch s, seconds the call took)."""
    from bench.apps import NOOP_EVENT, build

    app = build(target.url)
    await app.store()  # open and migrate before the clock starts
    batch = [(NOOP_EVENT, {"steps": steps, "sleep_ms": step_ms}) for _ in range(events)]
    started_wall, started = time.time(), time.perf_counter()
    await app.dispatch_many(batch)
    took = time.perf_counter() - started
    await app.aclose()
    return started_wall, took


def _wait_drained(probe: Probe, events: int) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while probe.finished("noop") < events:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained after {DRAIN_TIMEOUT_SECONDS} s: "
                               f"{probe.status_counts()}")
        time.sleep(0.02)


def _start_profilers(pool: WorkerPool, directory: str) -> list[subprocess.Popen[bytes]]:
    Path(directory).mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", "--threads",
                              "--format", "raw", "-o", f"{directory}/worker-{pid}.txt"],
                             stdout=subprocess.DEVNULL) for pid in pool.pids]


def _stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        profiler.wait(timeout=60)


def _report_writes(probe: Probe, target: Target, stats: list[dict[str, float]],
                   events: int) -> None:
    rows = probe.table_rows()
    print("rows stored: " + ", ".join(f"{name} {count}" for name, count in rows.items()))
    if target.store == "postgres":
        _report_pg_writes(probe, events)
    if stats:
        cpu_ms = sum(s["cpu_ms"] for s in stats)
        gc_ms = sum(s["gc_ms"] for s in stats)
        print(f"worker CPU: {cpu_ms / 1000:.2f} s user+sys in all workers = "
              f"{cpu_ms * 1000 / events:.0f} µs per job (less noisy than wall time), "
              f"of which garbage collection {gc_ms / max(cpu_ms, 1):.0%}")
    if stats and "transactions" in stats[0]:
        tx = sum(s["transactions"] for s in stats)
        changed = sum(s["rows_changed"] for s in stats)
        ops = sum(s["ops"] for s in stats)
        waits = sum(s.get("lock_retries", 0) for s in stats)
        waited = sum(s.get("lock_wait_seconds", 0) for s in stats)
        counted = ("sqlite3 total_changes of each writer connection" if target.store == "sqlite"
                   else "rows the writer's batched statements returned")
        print(f"writes (workers only; transactions and ops each writer committed, rows = "
              f"{counted}): {changed / events:.2f} rows/job, {ops / events:.2f} write ops/job, "
              f"{tx} transactions = {events / max(tx, 1):.1f} jobs/transaction")
        if "lock_retries" in stats[0]:  # SQLite only: PostgreSQL locks rows, not the file
            print(f"write lock: {waits} retries while another process held it, "
                  f"{waited:.3f} s waited in all")
        print("writes (dispatch): 1 transaction for the whole batch: "
              f"{rows['events']} event rows + {rows['runs']} run rows")


def _report_pg_writes(probe: Probe, events: int) -> None:
    written = probe.pg_rows_written()
    total = sum(i + u + d for i, u, d in written.values())
    detail = ", ".join(f"{name} +{i}/~{u}/-{d}" for name, (i, u, d) in sorted(written.items()))
    print(f"writes: {total / events:.2f} rows written per job (pg_stat_user_tables "
          f"inserted/updated/deleted, all processes: {detail})")


def _report(args: argparse.Namespace, probe: Probe, started_wall: float, dispatch_s: float,
            raw: list[_raw.RawLimit]) -> None:
    first, last = probe.span_ms("noop")
    store_s = max(last - first, 1) / 1000
    wall_s = last / 1000 - started_wall
    jobs_per_s = args.events / store_s
    print(f"dispatch: {args.events} events (+{args.events} runs) in one dispatch_many: "
          f"{dispatch_s:.3f} s = {args.events / dispatch_s:,.0f} events/s")
    print(f"end-to-end (store): {store_s:.3f} s from min(created_at) to max(ended_at) = "
          f"{jobs_per_s:,.0f} jobs/s")
    print(f"end-to-end (wall): {wall_s:.3f} s from the dispatch call to max(ended_at) = "
          f"{args.events / wall_s:,.0f} jobs/s")
    print(f"ratio: jobs/s ÷ raw commits/s (1 connection) = {jobs_per_s / raw[0].commits_per_s:.3f}")
    if args.steps > 1:
        print(f"steps_per_s={args.events * args.steps / store_s:.0f}")
    print(f"RESULT store={args.store} jobs_per_s={jobs_per_s:.0f} dispatch_s={dispatch_s:.3f} "
          f"raw_commits_per_s={raw[0].commits_per_s:.0f}")


def run(args: argparse.Namespace, target: Target) -> None:
    raw = _raw.measure(target)
    print(_raw.describe(raw))
    asyncio.run(_migrate(target))
    probe = Probe(target)
    pool = WorkerPool(target.url, args.workers, args.concurrency, cli=args.cli,
                      gc_freeze=args.gc_freeze)
    try:
        pool.start(probe)
        profilers = _start_profilers(pool, args.profile) if args.profile else []
        started_wall, dispatch_s = asyncio.run(
            _dispatch(target, args.events, args.steps, args.step_ms))
        _wait_drained(probe, args.events)
        _stop_profilers(profilers)
    finally:
        stats = pool.stop()
    failed = probe.status_counts().get("failed", 0)
    if failed:
        print(f"WARNING: {failed} runs failed")
    _report_writes(probe, target, stats, args.events)
    _report(args, probe, started_wall, dispatch_s, raw)
    probe.close()


def main() -> int:
    args = _parser().parse_args()
    print(f"stride throughput: store={args.store} events={args.events} steps={args.steps} "
          f"step_ms={args.step_ms:g} "
          f"workers={args.workers} concurrency={args.concurrency}"
          f"{' (CLI workers)' if args.cli else ''}{' gc.freeze()' if args.gc_freeze else ''}")
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
