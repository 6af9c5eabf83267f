"""PostgreSQL under faults: a worker killed mid-step, the server restarting, no server at all.

These spawn `stride worker` processes (tests/integration/apps_pg/jobs.py). The restart tests
restart a private server of their own (tests/integration/apps_pg/cluster.py), never the
shared one, which the tests running in parallel are using.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stride import Stride
from stride.errors import StoreUnavailable
from stride.stores.base import RunFilter
from tests.conftest import eventually
from tests.integration.apps_pg.cluster import PrivateServer, private_server
from tests.integration.apps_pg.jobs import make_app
from tests.integration.apps_pg.processes import start_worker, started, stop_workers

pytestmark = pytest.mark.slow

async def test_a_run_whose_worker_is_killed_mid_step_is_finished_by_another_worker(
        postgres_url: str, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    doomed = start_worker(postgres_url, log, lease=2, slow_seconds=3)
    survivor = None
    jobs = make_app(postgres_url)
    try:
        async with jobs:
            [event_id] = await jobs.dispatch("pg/crashy", {})
            await eventually(lambda: _started(log, "slow"), timeout=30, what="the slow step")
            doomed.kill()  # SIGKILL: no release, no goodbye; its lease has to run out
            doomed.wait()
            survivor = start_worker(postgres_url, log, lease=2, slow_seconds=3)
            [run] = await jobs.get_runs(event_id=event_id)
            done = await jobs.wait_for(run.id, timeout=60)
            runs_of_event = await jobs.get_runs(event_id=event_id)
    finally:
        errors = stop_workers([p for p in (doomed, survivor) if p is not None])

    assert done.status == "completed", errors
    assert done.output == ["one", "slow", "three"]
    assert started(log, "one") == {run.id: 1}  # committed before the kill: never re-run
    assert started(log, "slow") == {run.id: 2}  # in flight at the kill: run again
    assert started(log, "three") == {run.id: 1}
    assert [(s.id, s.attempts) for s in done.steps] == [("one", 1), ("slow", 1), ("three", 1)]
    assert len(runs_of_event) == 1


async def _started(log: Path, step: str) -> bool:
    return bool(started(log, step))


# -- the server restarts while a thousand runs are in flight -------------------------------


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    """A PostgreSQL server of this test's own, which it may restart."""
    with private_server() as private:
        yield private


@pytest.mark.timeout(400)
async def test_every_run_completes_exactly_once_across_a_server_restart(
        server: PrivateServer, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    workers = [start_worker(server.url, log, concurrency=20, lease=5) for _ in range(2)]
    jobs = make_app(server.url)
    total = 1000
    try:
        async with jobs:
            sent = []
            for chunk in range(0, total, 100):
                sent += await jobs.dispatch_many(
                    [("pg/bulk", {"n": n}) for n in range(chunk, chunk + 100)])
            await eventually(lambda: _completed_at_least(jobs, 40), timeout=60,
                             what="the first runs to complete")

            server.restart()

            await eventually(lambda: _completed_at_least(jobs, total), timeout=180,
                             interval=0.5, what=f"all {total} runs to complete")
            store = await jobs.store()
            runs = await store.list_runs(RunFilter(limit=1000))
            missing = [event_id for event_id in sent if await store.get_event(event_id) is None]
    finally:
        errors = stop_workers(workers)

    assert missing == []  # no accepted event was lost
    assert len(runs) == total, errors  # one run per event: nothing created twice
    assert {r.status for r in runs} == {"completed"}
    assert sorted(int(r.output_json or "-1") for r in runs) == list(range(total))
    assert set(started(log, "b")) == {r.id for r in runs}


async def _completed_at_least(jobs: Stride, count: int) -> bool:
    try:
        return len(await jobs.get_runs(status="completed", limit=1000)) >= count
    except StoreUnavailable:
        return False  # the server is restarting


# -- no server at all ------------------------------------------------------------------------


async def test_dispatch_to_an_unreachable_server_fails_fast_with_one_clear_line() -> None:
    jobs = Stride(app_id="nowhere", database_url="postgresql://postgres@127.0.0.1:1/test")
    started_at = time.monotonic()

    with pytest.raises(StoreUnavailable) as caught:
        await jobs.dispatch("user/signed.up", {"email": "a@x"})

    assert time.monotonic() - started_at < 5
    message = str(caught.value)
    assert "\n" not in message
    assert "127.0.0.1:1" in message and "Connection refused" in message
    assert "check that the server is running" in message


async def test_a_worker_keeps_going_when_the_server_blinks(server: PrivateServer) -> None:
    jobs = make_app(server.url)
    outputs: list[int] = []

    @jobs.define_job(id="echo", trigger="pg/echo")
    async def echo(ctx: object) -> int:
        value = int(ctx.event.data["n"])  # type: ignore[attr-defined]
        outputs.append(value)
        return value

    async with jobs, jobs.worker(concurrency=4, lease=3):
        await jobs.dispatch("pg/echo", {"n": 1})
        await eventually(lambda: _has(outputs, 1), timeout=10, what="the first run")
        server.restart()
        sent = await _dispatch_when_up(jobs, {"n": 2})
        assert sent
        await eventually(lambda: _has(outputs, 2), timeout=30, what="a run after the restart")


async def _has(values: list[int], value: int) -> bool:
    return value in values


async def _dispatch_when_up(jobs: Stride, data: dict[str, int]) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        try:
            return await jobs.dispatch("pg/echo", data)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
