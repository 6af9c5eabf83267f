"""PostgreSQL yardsticks: raw committed inserts/s, and how fast an idle worker starts a run.

    .venv/bin/python bench/postgres_raw.py [--url postgresql://...] [--seconds 2] [--pings 200]

- `raw_inserts_per_s(url, connections, seconds)`: single-row INSERTs in autocommit (one
  transaction each) from `connections` connections at once, as psycopg does them: the most
  commits/s this server gives one client, the figure a store's jobs/s should be read against.
- `start_latency(url, pings)`: one worker process idles (LISTEN/NOTIFY, no backlog); this
  process dispatches a `bench/ping` event, waits for its run to finish, pauses, repeats.
  Latency = the handler's first line (`started_ns`, stamped in the worker) minus the moment
  just before `dispatch` was called. Prints p50/p90/p99/max in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/postgres_raw.py`
    sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def raw_inserts_per_s(url: str = DEFAULT_URL, connections: int = 1,
                      seconds: float = 2.0) -> float:
    """Committed single-row inserts per second from `connections` threads, one connection each."""
    table = f"stride_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v text NOT NULL)")
    counts = [0] * connections
    deadline = time.perf_counter() + seconds

    def insert_loop(slot: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while time.perf_counter() < deadline:
                conn.execute(f"INSERT INTO {table} (v) VALUES (%s)", ("x" * 64,))
                counts[slot] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=insert_loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP TABLE {table}")
    return sum(counts) / elapsed


async def _pings(url: str, pings: int, pause: float) -> list[float]:
    from bench.apps import PING_EVENT, build

    app = build(url)
    latencies = []
    async with app:
        for _ in range(pings):
            before = time.time_ns()
            [event_id] = await app.dispatch(PING_EVENT, {})
            [run] = await app.get_runs(event_id=event_id)
            done = await app.wait_for(run.id, timeout=10)
            latencies.append((done.output["started_ns"] - before) / 1e6)
            await asyncio.sleep(pause)  # let the worker go idle again
    return latencies


def start_latency(url: str, pings: int = 200, pause: float = 0.02) -> list[float]:
    """Milliseconds from `dispatch` to the handler's first line, worker idle in between."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    target = f"{url}{'&' if '?' in url else '?'}schema={schema}"
    env = {**os.environ, "STRIDE_DATABASE_URL": target}
    asyncio.run(_migrate(target))
    worker = subprocess.Popen(
        [sys.executable, "-m", "stride", "--log-level", "WARNING", "worker", "bench.apps:jobs",
         "--concurrency", "10"], cwd=ROOT, env=env)
    try:
        time.sleep(3.0)  # interpreter start-up and the worker's first claim
        return asyncio.run(_pings(target, pings, pause))
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _migrate(url: str) -> None:
    from bench.apps import build

    app = build(url)
    await app.store()
    await app.aclose()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--pings", type=int, default=200)
    args = parser.parse_args()
    for connections in (1, 8):
        rate = raw_inserts_per_s(args.url, connections, args.seconds)
        print(f"raw: {rate:,.0f} committed single-row inserts/s from {connections} connection(s)")
    latencies = start_latency(args.url, args.pings)
    print(f"start latency, idle worker, {len(latencies)} pings: "
          f"p50 {statistics.median(latencies):.2f} ms, p90 {_percentile(latencies, 0.9):.2f} ms, "
          f"p99 {_percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms")


if __name__ == "__main__":
    main()
