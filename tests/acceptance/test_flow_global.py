"""Concurrency keys hold across worker processes, on both backends (DESIGN.md guarantee 5).

Three `stride worker` processes, each willing to run six runs at once, share one database.
Every run logs the wall-clock interval its step worked in and its key; afterwards the
intervals of all processes are laid side by side and the most that ever overlapped is
counted, per key and in all. The app is tests/acceptance/apps/flow_keyed.py.
"""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stride import Stride
from tests.acceptance.apps.flow_keyed import PER_USER, RESCAN, SCAN, SHARED_LIMIT, make_app
from tests.acceptance.conftest import WorkerProcess, Workers
from tests.acceptance.test_global_concurrency import max_overlap
from tests.conftest import eventually

APP = "tests.acceptance.apps.flow_keyed:jobs"
STEP_SECONDS = 0.2
pytestmark = pytest.mark.slow


@pytest.fixture
def pool(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on this test's database (either backend); killed at teardown."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    workers = Workers(database_url, log_dir)
    yield workers
    workers.kill_all()


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Stride]:
    app = make_app(database_url)
    await app.store()  # create the schema before the workers race to
    yield app
    await app.aclose()


async def start_workers(app: Stride, pool: Workers, count: int) -> list[WorkerProcess]:
    """Start `count` workers and wait until each has sent its first heartbeat."""
    started = [pool.start(APP, concurrency=6, lease=3) for _ in range(count)]
    store = await app.store()

    async def all_up() -> bool:
        for worker in started:
            if worker.process.poll() is not None:
                raise AssertionError(f"worker {worker.pid} ended early:\n{worker.log()}")
        rows = await store.list_workers(since_ms=0)
        pids = {json.loads(row.info_json).get("pid") for row in rows}
        return {worker.pid for worker in started} <= pids

    await eventually(all_up, timeout=60, interval=0.1, what=f"{count} workers up\n{pool.logs()}")
    return started


async def stop_workers(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert await worker.exit_code(timeout=30) == 0, worker.log()


def intervals_by_key(log: Path) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        start, end, _pid, key = line.split()
        found[key].append((float(start), float(end)))
        found["*"].append((float(start), float(end)))
    return found


def pids_in(log: Path) -> set[int]:
    return {int(line.split()[2]) for line in log.read_text().splitlines()}


async def wait_completed(app: Stride, count: int, pool: Workers) -> None:
    async def all_completed() -> bool:
        return len(await app.get_runs(status="completed", limit=500)) == count

    await eventually(all_completed, timeout=90, interval=0.1,
                     what=f"{count} completed runs\n{pool.logs()}")


async def test_a_key_never_runs_twice_at_once_across_processes(
        app: Stride, pool: Workers, tmp_path: Path) -> None:
    work_log = tmp_path / "work.log"
    workers = await start_workers(app, pool, 3)
    users = [f"user-{n}" for n in range(4)]

    await app.dispatch_many([(PER_USER, {"log": str(work_log), "seconds": STEP_SECONDS,
                                         "user": users[n % 4]}) for n in range(24)])
    await wait_completed(app, 24, pool)
    await stop_workers(workers)

    intervals = intervals_by_key(work_log)
    assert len(intervals["*"]) == 24, "each run's step worked once"
    assert [max_overlap(intervals[user]) for user in users] == [1, 1, 1, 1]
    assert max_overlap(intervals["*"]) >= 3, "different keys ran side by side"
    assert len(pids_in(work_log)) > 1, "the work was shared between processes"


async def test_a_shared_limit_holds_for_two_jobs_across_processes(
        app: Stride, pool: Workers, tmp_path: Path) -> None:
    work_log = tmp_path / "work.log"
    workers = await start_workers(app, pool, 3)

    await app.dispatch_many([(SCAN if n % 2 else RESCAN,
                              {"log": str(work_log), "seconds": STEP_SECONDS})
                             for n in range(12)])
    await wait_completed(app, 12, pool)
    await stop_workers(workers)

    intervals = intervals_by_key(work_log)
    assert len(intervals["ocr"]) == 12
    assert max_overlap(intervals["ocr"]) == SHARED_LIMIT
    assert len(pids_in(work_log)) > 1


async def test_a_backlogged_key_does_not_starve_others_across_processes(
        app: Stride, pool: Workers, tmp_path: Path) -> None:
    work_log = tmp_path / "work.log"
    busy = [(PER_USER, {"log": str(work_log), "seconds": 0.05, "user": "busy"})] * 2000
    await app.dispatch_many(busy)
    [lonely] = await app.dispatch(PER_USER, {"log": str(work_log), "seconds": 0.05,
                                             "user": "lonely"})
    started = time.monotonic()
    workers = await start_workers(app, pool, 2)

    async def lonely_done() -> bool:
        runs = await app.get_runs(event_id=lonely)
        return bool(runs) and runs[0].status == "completed"

    await eventually(lonely_done, timeout=60, interval=0.05, what=f"the lonely run\n{pool.logs()}")
    waited = time.monotonic() - started
    await stop_workers(workers)

    done_busy = sum(1 for line in work_log.read_text().splitlines() if line.endswith(" busy"))
    assert done_busy < 200, f"the lonely key waited for {done_busy} busy runs ({waited:.1f} s)"
    assert max_overlap(intervals_by_key(work_log)["busy"]) == 1
