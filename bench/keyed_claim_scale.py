"""How a claim's latency grows with the runs already leased, keyed against plain.

A keyed claim counts the leased runs of the keys it meets. It reads them through partial
indexes of leased runs by key, so its cost should not grow with the runs other keys hold
(it did while it walked every leased run: 14 ms at 5,000 on PostgreSQL). This benchmark
leases `--leased` runs (distinct keys, limit 1 each, so none parks), keeps `--queued` more
due, then times claims of `--batch` runs, each released again so the state stays the same:
the keyed job's claim against a plain job's with the same leased runs.

    python bench/keyed_claim_scale.py --store postgres --leased 200 1000 5000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/keyed_claim_scale.py`
    sys.path.insert(0, str(ROOT))

from bench import _raw  # noqa: E402
from bench._db import DEFAULT_POSTGRES_URL, Skip, drop_target, make_target  # noqa: E402
from stride import Concurrency, Context, Stride  # noqa: E402

APP_ID = "bench-claim-scale"
KEYED, PLAIN = "keyed", "plain"
LEASE_MS = 600_000
PUBLISH_CHUNK = 5_000


def build(url: str) -> Stride:
    app = Stride(app_id=APP_ID, database_url=url)

    @app.define_job(id=KEYED, trigger="bench/keyed",
                    concurrency=[Concurrency(limit=1, key="event.data.key")])
    async def keyed(ctx: Context[dict[str, Any]]) -> None:
        return None

    @app.define_job(id=PLAIN, trigger="bench/plain")
    async def plain(ctx: Context[dict[str, Any]]) -> None:
        return None

    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--leased", type=int, nargs="+", default=[200, 1000, 5000])
    parser.add_argument("--queued", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=100, help="runs per timed claim")
    parser.add_argument("--claims", type=int, default=30, help="timed claims per job")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    return parser


async def _claim(store: Any, job: str, limit: int) -> list[Any]:
    claimed: list[Any] = await store.claim(
        worker_id=f"bench-{job}", app_id=APP_ID, job_ids=[job], limit=limit,
        lease_ms=LEASE_MS, concurrency={}, keyed={KEYED} if job == KEYED else set())
    return claimed


async def _lease(store: Any, job: str, count: int) -> None:
    leased = 0
    while leased < count:
        got = await _claim(store, job, min(500, count - leased))
        if not got:
            raise RuntimeError(f"only {leased} of {count} {job} runs could be leased")
        leased += len(got)


async def _timed_claims(store: Any, job: str, args: argparse.Namespace) -> list[float]:
    """Claim a batch and release it, `--claims` times: each claim's seconds."""
    took = []
    for _ in range(args.claims):
        started = time.perf_counter()
        claimed = await _claim(store, job, args.batch)
        took.append(time.perf_counter() - started)
        if len(claimed) != args.batch:
            raise RuntimeError(f"a {job} claim got {len(claimed)} of {args.batch} runs")
        await store.release([run.lease for run in claimed])
    return took


async def _measure(url: str, leased: int, args: argparse.Namespace) -> dict[str, list[float]]:
    app = build(url)
    store: Any = await app.store()
    total = leased + args.queued
    for job in (KEYED, PLAIN):
        events = [(f"bench/{job}", {"key": f"k{n}"}) for n in range(total)]
        for start in range(0, total, PUBLISH_CHUNK):
            await app.dispatch_many(events[start:start + PUBLISH_CHUNK])
    # both jobs hold `leased` runs: the plain claim walks the same leased rows
    await _lease(store, KEYED, leased)
    await _lease(store, PLAIN, leased)
    result = {job: await _timed_claims(store, job, args) for job in (KEYED, PLAIN)}
    await app.aclose()
    return result


def main() -> int:
    args = _parser().parse_args()
    print(f"stride claim latency against leased runs: store={args.store} batch={args.batch} "
          f"queued={args.queued} claims={args.claims} per job")
    try:
        print(_raw.describe(_raw.measure_apart(args.store, args.postgres_url)))
    except Skip as exc:
        print(f"SKIP store={args.store}: {exc}")
        return 0
    for leased in args.leased:
        target = make_target(args.store, args.postgres_url)
        try:
            times = asyncio.run(_measure(target.url, leased, args))
        finally:
            drop_target(target)
        keyed, plain = (statistics.median(times[job]) * 1000 for job in (KEYED, PLAIN))
        print(f"leased {leased:>6,} per job: claim of {args.batch} runs, median of "
              f"{args.claims}: keyed {keyed:.2f} ms, plain {plain:.2f} ms")
        print(f"RESULT store={args.store} leased={leased} batch={args.batch} "
              f"keyed_ms={keyed:.2f} plain_ms={plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
