"""Sleepers: N runs each `step.sleep("nap", 1)`; how late after their due time do they resume?

    .venv/bin/python bench/sleepers.py --store sqlite [--runs 10000] [--together 5]
        [--workers 1] [--concurrency 10]

N `bench/sleep` events are dispatched at once (dispatch_many, 1,000 a call) to worker
processes started beforehand: by default one, with the worker's default settings
(`--concurrency` is `jobs.worker()`'s default, 10), which is what a user starts first. Each
run records its wake-up time in its sleep step (`wake_at` = the step's start
+ 1 s, in the store) and, once resumed, returns the wall clock of its handler's line after
the sleep. Lateness = that minus `wake_at`: the claim of a due run, the replay up to the
sleep, on top of the worker's backlog. With `--together S` every run instead sleeps until
one instant S seconds after the dispatch (`sleep_until`), so all N fall due at once and the
figure is how fast the worker drains a wave of N wake-ups.
Last line: `RESULT store=... runs=... workers=... concurrency=... late_p50_ms=...
late_p99_ms=... late_max_ms=... within_2s=...`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/sleepers.py`
    sys.path.insert(0, str(ROOT))

from bench import _raw  # noqa: E402
from bench._db import DEFAULT_POSTGRES_URL, Probe, Skip, drop_target, make_target  # noqa: E402
from bench.waits import (  # noqa: E402
    SLEEP_EVENT,
    WorkerProcesses,
    build,
    migrate,
    percentiles,
    wait_for_count,
)
from stride import _codec  # noqa: E402
from stride._worker import DEFAULT_CONCURRENCY  # noqa: E402


async def dispatch_sleepers(url: str, runs: int, together: float | None) -> float:
    """Dispatch the sleepers; returns how long the dispatch took (s)."""
    app = build(url)
    await app.store()
    until_ms = int((time.time() + together) * 1000) if together else None
    data = {"until_ms": until_ms} if until_ms else {"seconds": 1}
    began = time.perf_counter()
    for start in range(0, runs, 1000):
        await app.dispatch_many([(SLEEP_EVENT, data)
                                 for _ in range(start, min(runs, start + 1000))])
    elapsed = time.perf_counter() - began
    await app.aclose()
    return elapsed


def lateness(probe: Probe) -> list[float]:
    """Per run: its handler's line after the sleep minus the sleep's recorded wake-up (ms)."""
    rows = probe.rows("SELECT r.output, s.wake_at FROM runs r JOIN steps s ON s.run_id = r.id "
                      "AND s.step_id = 'nap' WHERE r.job_id = 'sleeper'")
    return [_codec.loads(output)["woke_ns"] / 1e6 - wake_at for output, wake_at in rows]


def run(args: argparse.Namespace) -> dict[str, float]:
    target = make_target(args.store, args.postgres_url)
    try:
        print(_raw.describe(_raw.measure(target)))
        asyncio.run(migrate(target.url))
        probe = Probe(target)
        with WorkerProcesses(target.url, args.workers, args.concurrency):
            wait_for_count(probe, "SELECT count(*) FROM workers", args.workers, "workers up")
            began = time.monotonic()
            dispatch_s = asyncio.run(dispatch_sleepers(target.url, args.runs, args.together))
            asleep_s = wait_for_count(
                probe, "SELECT count(*) FROM steps WHERE step_id = 'nap'", args.runs,
                "runs asleep") + dispatch_s
            wait_for_count(probe, "SELECT count(*) FROM runs WHERE job_id = 'sleeper' AND "
                           "status = 'completed'", args.runs, "sleepers resumed")
            total_s = time.monotonic() - began
        late = lateness(probe)
        probe.close()
    finally:
        drop_target(target)
    p = percentiles(late)
    within = sum(1 for value in late if value <= 2000)
    how = (f"until one instant {args.together:g} s after the dispatch" if args.together
           else "1 s each")
    print(f"{args.runs} runs sleeping {how}: dispatched in {dispatch_s:.2f} s, all asleep after "
          f"{asleep_s:.2f} s, all done after {total_s:.2f} s")
    print(f"lateness after the due time: p50 {p[50]:.0f} ms  p95 {p[95]:.0f} ms  "
          f"p99 {p[99]:.0f} ms  max {p[100]:.0f} ms; within 2 s: {within}/{len(late)}")
    return {"p50": p[50], "p99": p[99], "max": p[100], "within": within}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--together", type=float, metavar="S",
                        help="all sleep until one instant S seconds after the dispatch")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help="runs each worker executes at once (default: the worker's own)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    return parser


def main() -> int:
    args = _parser().parse_args()
    print(f"stride sleepers: store={args.store} runs={args.runs} workers={args.workers} "
          f"(concurrency {args.concurrency})")
    try:
        result = run(args)
    except Skip as exc:
        print(f"SKIP store={args.store}: {exc}")
        return 0
    print(f"RESULT store={args.store} runs={args.runs} workers={args.workers} "
          f"concurrency={args.concurrency} late_p50_ms={result['p50']:.0f} "
          f"late_p99_ms={result['p99']:.0f} late_max_ms={result['max']:.0f} "
          f"within_2s={result['within']:.0f}/{args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
