"""Guarantees 2 and 3 with real processes: a worker killed mid-step, a worker told to stop.

The job (tests/acceptance/apps/crashy.py) has three steps; each body logs the pid that ran
it. Step 2 hangs the first time it runs, which is when the tests kill or stop its worker.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stride import Stride
from tests.acceptance.apps.crashy import EVENT, make_app, runs_of
from tests.acceptance.conftest import WorkerProcess, Workers
from tests.conftest import eventually

APP = "tests.acceptance.apps.crashy:jobs"
pytestmark = pytest.mark.slow


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[Stride]:
    app = make_app(sqlite_url)
    yield app
    await app.aclose()


async def dispatch_run(app: Stride, workdir: Path, hang_seconds: float) -> str:
    [event_id] = await app.dispatch(EVENT, {"workdir": str(workdir),
                                            "hang_seconds": hang_seconds})
    [run] = await app.get_runs(event_id=event_id)
    return run.id


async def step_2_started(workdir: Path) -> bool:
    return bool(runs_of(workdir, "step-2"))


async def test_a_run_survives_kill_9_and_completes_exactly_once(
        app: Stride, workers: Workers, tmp_path: Path) -> None:
    run_id = await dispatch_run(app, tmp_path, hang_seconds=60)
    doomed = workers.start(APP, lease=2)
    await eventually(lambda: step_2_started(tmp_path), timeout=20,
                     what=f"step 2 to start\n{workers.logs()}")

    doomed.send(signal.SIGKILL)
    assert await doomed.exit_code() == -signal.SIGKILL

    # the dead worker's lease still holds the run; step 1 is committed, step 2 is not
    run = await app.get_run(run_id)
    assert run.status == "running"
    assert [(step.id, step.status) for step in run.steps] == [("step-1", "completed")]

    # two survivors race for the run once its lease expires: one takes it over
    workers.start(APP, lease=2)
    workers.start(APP, lease=2)
    run = await app.wait_for(run_id, timeout=30)
    for survivor in workers.started[1:]:
        assert await survivor.stop() == 0, workers.logs()

    assert run.status == "completed", workers.logs()
    assert run.output == {"step-1": 1, "step-2": "two", "step-3": 1}
    assert runs_of(tmp_path, "step-1") == [doomed.pid], "committed before the crash: never again"
    [first, second] = runs_of(tmp_path, "step-2")  # at least once: the crash lost one result
    assert first == doomed.pid and second != doomed.pid
    assert runs_of(tmp_path, "step-3") == [second], "the run completed once, where it resumed"
    assert [step.id for step in run.steps] == ["step-1", "step-2", "step-3"]
    assert run.step("step-2").attempts == 1, "a killed attempt leaves no record"
    assert len(await app.get_runs()) == 1


async def test_a_stopped_worker_finishes_its_step_and_another_continues(
        app: Stride, workers: Workers, tmp_path: Path) -> None:
    grace = 5.0
    run_id = await dispatch_run(app, tmp_path, hang_seconds=1.0)
    first = workers.start(APP, lease=2, grace=grace)
    await eventually(lambda: step_2_started(tmp_path), timeout=20,
                     what=f"step 2 to start\n{workers.logs()}")

    asked = time.monotonic()
    first.send(signal.SIGTERM)
    assert await first.exit_code() == 0, first.log()
    assert time.monotonic() - asked < grace, "the worker exits within its grace period"

    # the in-flight step finished and was checkpointed; the next one was not started
    run = await app.get_run(run_id)
    assert [(step.id, step.status, step.output) for step in run.steps] == [
        ("step-1", "completed", 1), ("step-2", "completed", "two")]
    assert run.status == "queued", "given back at the step boundary, ready for any worker"
    assert runs_of(tmp_path, "step-3") == []

    second = workers.start(APP, lease=2, grace=grace)
    run = await app.wait_for(run_id, timeout=20)
    assert await second.stop() == 0

    assert run.status == "completed", workers.logs()
    assert runs_of(tmp_path, "step-1") == [first.pid]
    assert runs_of(tmp_path, "step-2") == [first.pid], "the checkpointed step is not re-run"
    assert runs_of(tmp_path, "step-3") == [second.pid]
    assert run.output == {"step-1": 1, "step-2": "two", "step-3": 1}


async def test_a_worker_with_no_work_stops_at_once_on_sigterm(workers: Workers,
                                                             sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    await app.store()  # the database exists before the worker starts
    await app.aclose()
    idle = workers.start(APP, lease=2, grace=5)
    await idle.wait_until_up()

    asked = time.monotonic()
    assert await idle.stop() == 0, idle.log()
    assert time.monotonic() - asked < 5.0  # the grace is 5 s: an idle worker needs none of it


# --- a worker that stalls past its lease -------------------------------------------------------
# SIGSTOP freezes a whole worker, heartbeats included, as a long GC pause or a suspended VM
# would. Its lease expires, another worker takes the run over; when the frozen worker wakes
# up it must not be able to change the run any more.


async def freeze_until_rescued(app: Stride, workers: Workers, tmp_path: Path,
                               run_id: str) -> tuple[WorkerProcess, WorkerProcess]:
    frozen = workers.start(APP, lease=2)
    await eventually(lambda: step_2_started(tmp_path), timeout=20,
                     what=f"step 2 to start\n{workers.logs()}")
    frozen.send(signal.SIGSTOP)
    rescuer = workers.start(APP, lease=2)
    run = await app.wait_for(run_id, timeout=30)
    assert run.status == "completed", workers.logs()

    frozen.send(signal.SIGCONT)
    assert await frozen.stop() == 0, frozen.log()  # after its late step settled
    assert await rescuer.stop() == 0, rescuer.log()
    assert await app.get_run(run_id) == run, "the woken worker changed nothing"
    return frozen, rescuer


async def test_a_frozen_worker_loses_its_run_and_cannot_commit_to_it(
        app: Stride, workers: Workers, tmp_path: Path) -> None:
    run_id = await dispatch_run(app, tmp_path, hang_seconds=2.5)

    frozen, rescuer = await freeze_until_rescued(app, workers, tmp_path, run_id)

    assert runs_of(tmp_path, "step-1") == [frozen.pid]
    assert runs_of(tmp_path, "step-2") == [frozen.pid, rescuer.pid]
    assert runs_of(tmp_path, "step-3") == [rescuer.pid]


async def test_a_worker_that_lost_its_run_runs_no_more_steps_even_if_errors_are_caught(
        app: Stride, workers: Workers, tmp_path: Path) -> None:
    [event_id] = await app.dispatch(EVENT, {"workdir": str(tmp_path), "hang_seconds": 2.5,
                                            "best_effort": True})
    [run] = await app.get_runs(event_id=event_id)

    _frozen, rescuer = await freeze_until_rescued(app, workers, tmp_path, run.id)

    assert runs_of(tmp_path, "step-3") == [rescuer.pid]


# --- a step that outlasts the grace period ------------------------------------------------------


async def test_a_worker_exits_within_its_grace_even_if_a_step_outlasts_it(
        app: Stride, workers: Workers, tmp_path: Path) -> None:
    grace = 1.0
    run_id = await dispatch_run(app, tmp_path, hang_seconds=30)
    stuck = workers.start(APP, lease=2, grace=grace)
    await eventually(lambda: step_2_started(tmp_path), timeout=20,
                     what=f"step 2 to start\n{workers.logs()}")

    stuck.send(signal.SIGTERM)

    async def given_back() -> bool:
        return (await app.get_run(run_id)).status == "queued"

    await eventually(given_back, timeout=10, what=f"the run to be released\n{stuck.log()}")
    assert await stuck.exit_code(timeout=grace + 3) == 0
