"""A job's concurrency limit holds across worker processes, not per process.

Three `stride worker` processes, each willing to run five runs at once, share one SQLite
file. The job (tests/acceptance/apps/limited.py) allows two concurrent runs. Every run logs
the wall-clock interval its step worked in; afterwards the intervals of all processes are
laid side by side and the most that ever overlapped is counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.apps.limited import CONCURRENCY, EVENT, make_app
from tests.acceptance.conftest import Workers
from tests.conftest import eventually

APP = "tests.acceptance.apps.limited:jobs"
RUNS = 12
STEP_SECONDS = 0.3
pytestmark = pytest.mark.slow


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that contain one instant (touching ends do not)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, change in edges:  # at equal times -1 sorts first: an end before a start
        current += change
        most = max(most, current)
    return most


def test_max_overlap_counts_only_real_overlap() -> None:
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 2), (1, 3), (1.5, 1.6)]) == 3
    assert max_overlap([]) == 0


async def test_three_workers_never_run_more_than_the_job_allows(
        workers: Workers, sqlite_url: str, tmp_path: Path) -> None:
    app = make_app(sqlite_url)
    await app.store()  # create the database before the workers race to
    work_log = tmp_path / "work.log"
    started = [workers.start(APP, concurrency=5, lease=2) for _ in range(3)]

    for worker in started:
        await worker.wait_until_up()  # all three compete from the first run on

    await app.dispatch_many([(EVENT, {"log": str(work_log), "seconds": STEP_SECONDS})
                             for _ in range(RUNS)])

    async def all_completed() -> bool:
        return len(await app.get_runs(status="completed")) == RUNS

    await eventually(all_completed, timeout=30, interval=0.05,
                     what=f"{RUNS} completed runs\n{workers.logs()}")
    for worker in started:
        assert await worker.stop() == 0, worker.log()
    await app.aclose()

    lines = [line.split() for line in work_log.read_text().splitlines()]
    assert len(lines) == RUNS, "each run's step worked once"
    intervals = [(float(start), float(end)) for start, end, _ in lines]
    pids = {int(pid) for _, _, pid in lines}
    assert max_overlap(intervals) == CONCURRENCY, sorted(intervals)
    assert len(pids) > 1, "the work was shared between processes"
    assert pids <= {worker.pid for worker in started}
