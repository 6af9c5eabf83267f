"""The worker: claims due runs in batches, executes them, applies their decisions.

Around the claim loop run two Loopers: the heartbeat (extends the leases of every run this
worker holds, in one statement) and the reclaimer (requeues runs whose worker died). On
stop the worker claims nothing more, lets in-flight runs reach their next step boundary
within the grace period, and gives back whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stride import _codec
from stride._audit import AuditRecorder
from stride._cron import CronScheduler
from stride._decisions import Abandoned, Completed, Decision, Failed, Rescheduled
from stride._failures import describe_error
from stride._flow_keys import is_keyed
from stride._ids import new_id
from stride._invocations import SWEEP_INTERVAL_SECONDS, CancelledChildren
from stride._looper import Looper
from stride._timeouts import TIMEOUTS_INTERVAL_SECONDS
from stride._timeouts import enforce as enforce_timeouts
from stride._waits import PublishBatch, finish_events
from stride.errors import ConfigurationError, LeaseLost, StoreError
from stride.executors._workflow import WorkflowHost
from stride.executors.inprocess import run_claimed
from stride.jobs import Job
from stride.stores.base import ClaimedRun, Lease, Store

log = logging.getLogger("stride.worker")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

DEFAULT_CONCURRENCY = 10
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_POLL_SECONDS = 0.25
MAX_CLAIM_BATCH = 256
CRON_INTERVAL_SECONDS = 0.5
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
PRUNE_INTERVAL_SECONDS = 60.0
WAKE_COALESCE_SECONDS = 0.02
"""An idle worker waits at least this long for runs it suspended to fall due, so that a
wave of wake-ups costs a claim per 20 ms, not one per run."""
MAX_WAKE_TIMES = 100_000


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs; validated at construction."""

    concurrency: int = DEFAULT_CONCURRENCY
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    threads: int | None = None
    retention_seconds: float = DEFAULT_RETENTION_SECONDS

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigurationError(f"worker concurrency must be >= 1, got {self.concurrency}")
        if self.lease_seconds < 0.5:
            raise ConfigurationError(f"lease must be >= 0.5 s, got {self.lease_seconds}")
        if self.grace_seconds < 0 or self.poll_seconds <= 0:
            raise ConfigurationError("grace must be >= 0 and poll interval > 0 seconds")


class Worker:
    """Executes the runs of `jobs` from `store` until stopped."""

    def __init__(self, *, app_id: str, jobs: Mapping[str, Job[Any, Any]], store: Store,
                 logger: logging.Logger, options: WorkerOptions,
                 host: WorkflowHost | None = None) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self._host = host  # lends send_event/invoke the app's dispatch and jobs
        self.app_id = app_id
        self.options = options
        self._jobs = dict(jobs)
        self._store = store
        self._logger = logger
        self._limits = {j.id: j.concurrency for j in jobs.values() if j.concurrency}
        self._keyed = frozenset(j.id for j in jobs.values() if is_keyed(j.flow))
        self._active: dict[str, tuple[asyncio.Task[None], Lease]] = {}  # handlers running
        # runs whose handler is done and whose outcome is being committed: their slot is
        # free already (see `_handler_done`), their lease not yet
        self._applying: dict[str, tuple[asyncio.Task[None], Lease]] = {}
        self._unreleased: list[Lease] = []
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._draining = False
        self._threads = ThreadPoolExecutor(
            max_workers=options.threads or max(4, options.concurrency),
            thread_name_prefix="stride-handler")
        self._claim_task: asyncio.Task[None] | None = None
        self._wakes = WakeTimes()
        lease = options.lease_seconds
        self._heartbeat = Looper("heartbeat", lease / 3, self._beat)
        self._reclaimer = Looper("reclaimer", max(0.2, lease / 4), self._reclaim)
        self._audit = AuditRecorder(store, app_id=app_id)
        self._cron = CronScheduler(app_id=app_id, jobs=jobs, store=store)
        self._cron_looper = Looper("cron", CRON_INTERVAL_SECONDS, self._fire_cron)
        self._pruner = Looper("pruner", PRUNE_INTERVAL_SECONDS, self._prune)
        self._timeouts = Looper("timeouts", TIMEOUTS_INTERVAL_SECONDS, self._enforce_timeouts)
        self._children = CancelledChildren(
            store, lookback_ms=int(options.retention_seconds * 1000))
        self._invocations = Looper("invocations", SWEEP_INTERVAL_SECONDS,
                                   self._children.tick)

    @property
    def active_runs(self) -> int:
        """Runs this worker holds: executing, or committing their outcome."""
        return len(self._active) + len(self._applying)

    async def start(self) -> None:
        await self._beat()
        self._heartbeat.start()
        self._reclaimer.start()
        self._audit.start()
        self._pruner.start()
        self._invocations.start()
        if self._cron.has_work:
            self._cron_looper.start()
        if any(job.timeouts is not None for job in self._jobs.values()):
            self._timeouts.start()
        self._claim_task = asyncio.create_task(self._claim_loop(), name="stride-claim")
        log.info("worker %s started (concurrency %d, jobs: %s)", self.id,
                 self.options.concurrency, ", ".join(sorted(self._jobs)) or "none")

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; give in-flight runs `grace` seconds; release the rest."""
        grace = self.options.grace_seconds if grace is None else grace
        self._stopping.set()
        self._draining = True
        if self._claim_task is not None:
            await self._claim_task
        tasks = [task for task, _ in [*self._active.values(), *self._applying.values()]]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        leftover = [*self._active.values(), *self._applying.values()]
        for task, _ in leftover:
            task.cancel()
        if leftover:
            await asyncio.gather(*(task for task, _ in leftover), return_exceptions=True)
            await self._release([lease for _, lease in leftover])
        await self._heartbeat.stop()
        await self._reclaimer.stop()
        await self._cron_looper.stop()
        await self._pruner.stop()
        await self._timeouts.stop()
        await self._invocations.stop()
        await self._audit.stop()  # after the last run: writes the bypass records left
        self._threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped", self.id)

    async def _release(self, leases: list[Lease]) -> None:
        try:
            await self._store.release(leases)
            log.info("released %d unfinished runs", len(leases))
        except StoreError as exc:
            log.warning("could not release %d runs (%s); they resume when their lease expires",
                        len(leases), exc)

    # -- claiming ------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failing = False
        while not self._stopping.is_set():
            free = self.options.concurrency - len(self._active)
            if free <= 0:
                await self._wait_for_slot()
                continue
            limit = min(free, MAX_CLAIM_BATCH)
            try:
                claimed = await self._store.claim(
                    worker_id=self.id, app_id=self.app_id, job_ids=list(self._jobs), limit=limit,
                    lease_ms=int(self.options.lease_seconds * 1000), concurrency=self._limits,
                    keyed=self._keyed)
            except StoreError as exc:
                if not failing:
                    log.warning("claiming runs failed, retrying: %s", exc)
                failing = True
                await self._sleep_unless_stopping(1.0)
                continue
            if failing:
                log.warning("claiming runs works again")
                failing = False
            for run in claimed:
                self._start_run(run)
            if len(claimed) < limit:
                await self._wait_for_work()

    async def _wait_for_slot(self) -> None:
        self._slot_freed.clear()
        waiter = asyncio.create_task(self._slot_freed.wait())
        stopper = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()

    async def _wait_for_work(self) -> None:
        timeout = self._wakes.seconds_to_next(_now_ms(), self.options.poll_seconds)
        if timeout <= 0:
            return
        change = asyncio.create_task(self._store.wait_for_change(timeout))
        stopper = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({change, stopper}, return_when=asyncio.FIRST_COMPLETED)
        change.cancel()
        stopper.cancel()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- executing -----------------------------------------------------------

    def _start_run(self, claimed: ClaimedRun) -> None:
        run_id = claimed.lease.run_id
        task = asyncio.create_task(self._execute(claimed), name=f"stride-run-{run_id}")
        self._active[run_id] = (task, claimed.lease)
        task.add_done_callback(lambda _t: self._run_done(run_id))

    def _run_done(self, run_id: str) -> None:
        self._applying.pop(run_id, None)
        if self._active.pop(run_id, None) is not None:
            self._slot_freed.set()

    def _handler_done(self, run_id: str) -> None:
        """The run's handler reached its decision: its slot is free while the outcome is
        committed, so the next claim overlaps that commit instead of following it. At
        concurrency 10 on PostgreSQL a batch of runs otherwise waited for a claim, their
        checkpoints and their reschedule or finish one after the other (bench/sleepers.py:
        the wave of 10,000 resumes drained in 1.6-2.2 s instead of 3.2-7 s). The run stays
        leased, and counted by the store's concurrency limits, until the commit lands."""
        entry = self._active.pop(run_id, None)
        if entry is not None:
            self._applying[run_id] = entry
            self._slot_freed.set()

    async def _execute(self, claimed: ClaimedRun) -> None:
        job = self._jobs[claimed.job_id]
        run_id = claimed.lease.run_id
        log.debug("run %s of %s: running", run_id, job.id)
        try:
            decision = await run_claimed(self._store, job, claimed, app_id=self.app_id,
                                         threads=self._threads, logger=self._logger,
                                         draining=lambda: self._draining, host=self._host)
        except Exception as exc:  # an engine bug: never leave the run 'running' for ever
            log.exception("run %s: the executor failed", run_id)
            error = describe_error(exc, attempt=1, started_at=None, ended_at=_now_ms())
            decision = Failed(_codec.dumps_str(error), _codec.dumps_str([error]))
        self._handler_done(run_id)
        try:
            await self._apply(claimed.lease, decision,
                              finish_events(self.app_id, job, claimed, decision))
        except LeaseLost as exc:
            log.warning("%s", exc)
        except StoreError as exc:
            log.warning("run %s: could not record its outcome (%s); it resumes after its "
                        "lease expires", run_id, exc)
        else:
            if log.isEnabledFor(logging.DEBUG):  # _describe runs before debug() would filter
                log.debug("run %s of %s: %s", run_id, job.id, _describe(decision))

    async def _apply(self, lease: Lease, decision: Decision,
                     publish: PublishBatch | None = None) -> None:
        """`publish`: events that go out with the finish (an invoked run's result, the run
        of an on-failure handler), in its transaction."""
        match decision:
            case Completed(output_json=output):
                await self._store.finish(lease, status="completed", output_json=output,
                                         error_json=None, publish=publish or None)
            case Failed(error_json=error, errors_json=errors):
                await self._store.finish(lease, status="failed", output_json=None,
                                         error_json=error, errors_json=errors,
                                         publish=publish or None)
            case Rescheduled(available_at=at, waits=waits) if waits:
                await self._store.suspend_for_events(lease, waits, available_at=at)
                self._wakes.add(at)
            case Rescheduled(available_at=at, status=status, attempt=attempt, errors_json=errs,
                             step=step):
                await self._store.reschedule(lease, available_at=at, status=status,
                                             attempt=attempt, errors_json=errs, step=step)
                self._wakes.add(at)
            case Abandoned(reason=reason, release=release):
                log.warning("run %s abandoned by this worker: %s", lease.run_id, reason)
                if release:
                    self._unreleased.append(lease)
                    await self._release_abandoned()

    # -- loopers -------------------------------------------------------------

    async def _release_abandoned(self) -> None:
        """Give back runs abandoned after a store error, so they do not wait for their lease
        (which this worker's own heartbeat would keep renewing). Retried every heartbeat."""
        if not self._unreleased:
            return
        leases, self._unreleased = self._unreleased, []
        try:
            await self._store.release(leases)
        except StoreError:
            self._unreleased.extend(leases)

    async def _beat(self) -> None:
        await self._release_abandoned()
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "concurrency": self.options.concurrency, "active": self.active_runs,
                "jobs": sorted(self._jobs)}
        await self._store.heartbeat(worker_id=self.id, app_id=self.app_id,
                                    lease_ms=int(self.options.lease_seconds * 1000),
                                    info_json=_codec.dumps_str(info))

    async def _prune(self) -> None:
        """Delete finished runs and old events past the retention, in small batches."""
        deleted = await self._store.prune(
            older_than_ms=int(self.options.retention_seconds * 1000), batch_size=500)
        if deleted:
            log.info("pruned %d finished runs and events older than the retention", deleted)

    async def _enforce_timeouts(self) -> None:
        await enforce_timeouts(self._store)

    async def _fire_cron(self) -> None:
        await self._cron.tick()

    async def _reclaim(self) -> None:
        for run_id in await self._store.reclaim_expired():
            log.warning("run %s reclaimed: its worker's lease expired", run_id)


class WakeTimes:
    """When the runs this worker suspended (sleeps, retries, wait timeouts) fall due.

    A run falling due is no commit: nothing notifies an idle worker, which would only find it
    at its next poll (`poll_seconds`, 250 ms by default, late for a 1 s sleep). So the claim
    loop also wakes up at these times. Runs suspended by other workers are found by polling.
    """

    def __init__(self) -> None:
        self._heap: list[int] = []

    def add(self, at_ms: int) -> None:
        if len(self._heap) < MAX_WAKE_TIMES:  # past that, polling finds the rest
            heapq.heappush(self._heap, at_ms)

    def seconds_to_next(self, now_ms: int, poll_seconds: float) -> float:
        """0 if a run fell due since the last call; else how long to wait, at most
        `poll_seconds` and at least WAKE_COALESCE_SECONDS."""
        heap, fell_due = self._heap, False
        while heap and heap[0] <= now_ms:
            heapq.heappop(heap)
            fell_due = True
        if fell_due:
            return 0.0
        if not heap:
            return poll_seconds
        return min(poll_seconds, max(WAKE_COALESCE_SECONDS, (heap[0] - now_ms) / 1000))


def _describe(decision: Decision) -> str:
    match decision:
        case Completed():
            return "completed"
        case Failed():
            return "failed"
        case Rescheduled(available_at=at):
            return f"rescheduled in {max(0, at - time.time_ns() // 1_000_000)} ms"
        case Abandoned(reason=reason):
            return f"abandoned ({reason})"
