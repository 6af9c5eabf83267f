"""The workflow steps of the in-process executor: wait_for_event, send_event and invoke.

Each is a step like `step.run`: memoized, shown in `stride run ID`, replayed from its record.
A waiting step suspends the run (no worker is held): the executor collects the waits the
handler reached and the worker registers them with the run's suspension, in one store
transaction (`Store.suspend_for_events`), which also catches an event that arrived while
the handler was deciding to wait.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property
from typing import Any, Protocol

from stride import _codec
from stride._decisions import Rescheduled
from stride._replay import Memo, RunLost, StepCall, Suspend
from stride._waits import (
    INVOKE_FINISHED,
    NEVER,
    chooser,
    event_dict,
    invocation_id,
    key_at,
    wait_key,
)
from stride.errors import ConfigurationError, StepError, StoreError
from stride.events import Event, EventType
from stride.jobs import Job, check_match_path
from stride.stores.base import ClaimedRun, NewEvent, NewRun, NewWait, StepRecord, Store

NO_KEY = "-"
"""The key of a wait whose trigger has no value at its `match` path: it never matches."""


class WorkflowHost(Protocol):
    """What the app lends the executor for steps that start other work."""

    dedupe_ms: int

    async def send_from_run(self, events: Sequence[Any], *, id_prefix: str,
                            user: dict[str, Any] | None) -> list[str]:
        """Dispatch `events` (ids made from `id_prefix` where none is given)."""
        ...

    def child_run(self, job: Job[Any, Any] | str, data: Any, *, event_id: str,
                  user: dict[str, Any] | None) -> tuple[NewEvent, list[NewRun]]:
        """The event and run that start `job` as a child, the event's id given."""
        ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:20]


def parse_event(output_json: str | None, event_type: EventType[Any] | None) -> Event[Any] | None:
    """The event a wait step recorded (None after a timeout), `data` parsed into its model."""
    found = _codec.loads(output_json)
    if found is None:
        return None
    data = found["data"] if event_type is None else event_type.parse(found["data"])
    return Event(id=found["id"], name=found["name"], data=data, user=found.get("user"),
                 ts=found["ts"])


class WorkflowSteps:
    """Part of `RunExecution`: the steps that wait for events or start other runs."""

    store: Store
    job: Job[Any, Any]
    claimed: ClaimedRun
    memo: Memo
    host: WorkflowHost | None
    _pending_waits: list[NewWait]
    _pending_sleep: StepRecord | None
    _draining: Callable[[], bool]

    # provided by RunExecution
    _checkpoint: Callable[[StepRecord], Awaitable[None]]
    _lose: Callable[[StoreError], RunLost]
    _step_started: Callable[[], None]
    _step_settled: Callable[[], None]

    @cached_property
    def trigger(self) -> dict[str, Any]:
        """The run's event as CEL expressions see it (`event` in `if_` filters)."""
        return event_dict(self.claimed.event)

    def _host(self, what: str) -> WorkflowHost:
        if self.host is None:
            raise ConfigurationError(f"step.{what} needs a worker started from a Stride app "
                                     "(app.worker()), which lends it the app's jobs")
        return self.host

    # -- wait_for_event ------------------------------------------------------------------

    async def wait_for_event(self, user_id: str, *, event: str, timeout_ms: int,
                             match: str | None, if_: str | None,
                             event_type: EventType[Any] | None) -> Event[Any] | None:
        """The wait step: the matching event (None after `timeout_ms`), suspending till then."""
        if match is not None:
            check_match_path(match)
        call = self.memo.next_call(user_id)
        record = call.recorded
        if record is None or record.status != "completed":
            key = key_at(self.trigger, match or "")
            wait = self._new_wait(call, "wait", timeout_ms, event, match or "",
                                  NO_KEY if key is None else key, if_)
            record = await self._await(wait, record)
        return parse_event(record.output_json, event_type)

    def _new_wait(self, call: StepCall, kind: str, timeout_ms: int | None, event: str,
                  path: str, key: str, if_: str | None) -> NewWait:
        recorded = call.recorded
        now = _now_ms()
        started = recorded.started_at if recorded and recorded.started_at else now
        expires = (recorded.wake_at if recorded and recorded.wake_at
                   else NEVER if timeout_ms is None else now + timeout_ms)
        step = StepRecord(call.step_id, call.position, kind, "waiting", started_at=started,
                          wake_at=expires)
        return NewWait(step, event, path, key, if_)

    async def _await(self, wait: NewWait, recorded: StepRecord | None) -> StepRecord:
        """The completed step if the wait is over; else suspend the run on it. Counted as a
        step in flight, so that a sibling's suspension (asyncio.gather) waits until this
        wait is collected for registration."""
        self._step_started()
        try:
            if recorded is not None:  # resumed: woken by an event, its timeout, or a sibling
                done = await self._resolve(wait, expire=_now_ms() >= wait.expires_at)
                if done is not None:
                    return done
            if self._draining():
                raise Suspend(_now_ms(), "worker is shutting down")
            self._pending_waits.append(wait)
            raise Suspend(wait.expires_at, f"step {wait.step.step_id!r} waits for "
                                           f"{wait.event_name!r}", "waiting")
        finally:
            self._step_settled()

    async def _resolve(self, wait: NewWait, *, expire: bool) -> StepRecord | None:
        try:
            done = await self.store.resolve_wait(self.claimed.lease, wait,
                                                 choose=chooser(self.trigger), expire=expire)
        except StoreError as exc:
            raise self._lose(exc) from exc
        if done is not None:
            self.memo.record(done)
        return done

    async def suspended(self, suspend: Suspend) -> Rescheduled:
        """The decision for a suspended handler: with the waits it reached, if any, and the
        record of the fresh sleep it reached, if any (written with the reschedule)."""
        waits, sleep = self._pending_waits, self._pending_sleep
        wakes = [] if sleep is None or sleep.wake_at is None else [sleep.wake_at]
        if not waits:
            at = min([suspend.available_at, *wakes])
            return Rescheduled(at, suspend.status, step=sleep)
        if sleep is not None:  # a wait and a sleep at once: the suspension takes no step
            await self._checkpoint(sleep)
        at = min([suspend.available_at, *wakes, *(wait.expires_at for wait in waits)])
        return Rescheduled(at, "waiting", waits=tuple(waits))

    # -- send_event ----------------------------------------------------------------------

    async def send_event(self, user_id: str, events: Sequence[Any]) -> list[str]:
        """Dispatch `events` once: a replay returns the recorded ids, and a retry after a
        crash sends the same ids again, which the store drops as duplicates."""
        call = self.memo.next_call(user_id)
        if call.recorded is not None and call.recorded.status == "completed":
            ids: list[str] = _codec.loads(call.recorded.output_json)
            return ids
        if self._draining():
            raise Suspend(_now_ms(), "worker is shutting down")
        host = self._host("send_event")
        started = _now_ms()
        self._step_started()
        try:
            prefix = "send:" + _digest(self.claimed.lease.run_id, call.step_id)
            ids = await host.send_from_run(events, id_prefix=prefix,
                                           user=self.trigger["user"])
            await self._checkpoint(StepRecord(
                call.step_id, call.position, "send", "completed",
                output_json=_codec.dumps_str(ids), started_at=started, ended_at=_now_ms()))
        finally:
            self._step_settled()
        return ids

    # -- invoke --------------------------------------------------------------------------

    async def invoke(self, user_id: str, *, job: Job[Any, Any] | str, data: Any,
                     timeout_ms: int | None) -> Any:
        """Run `job` as a child and return its output (its error raises `StepError`)."""
        call = self.memo.next_call(user_id)
        record = call.recorded
        if record is None or record.status != "completed":
            self._step_started()  # in flight until its wait is collected (see `_await`)
            try:
                record = await self._invoke(call, job, data, timeout_ms)
            finally:
                self._step_settled()
        return _invoke_result(call.step_id, record.output_json, job)

    async def _invoke(self, call: StepCall, job: Job[Any, Any] | str, data: Any,
                      timeout_ms: int | None) -> StepRecord:
        host = self._host("invoke")
        child_id = invocation_id(self.claimed.lease.run_id, call.step_id)
        wait = self._new_wait(call, "invoke", timeout_ms, INVOKE_FINISHED, "data.invocation",
                              wait_key(child_id) or NO_KEY, None)
        if call.recorded is None:
            if self._draining():
                raise Suspend(_now_ms(), "worker is shutting down")
            # record the start first: its time bounds the events a registration looks at,
            # and must not move if the worker dies before the wait is registered
            await self._checkpoint(wait.step)
        else:
            done = await self._resolve(wait, expire=_now_ms() >= wait.expires_at)
            if done is not None:
                return done
        child = host.child_run(job, data, event_id=child_id, user=self.trigger["user"])
        try:  # after a crash or a resume this is the same event id: dropped as a duplicate
            await self.store.publish([child], dedupe_ms=host.dedupe_ms)
        except StoreError as exc:
            raise self._lose(exc) from exc
        self._pending_waits.append(wait)
        raise Suspend(wait.expires_at, f"step {call.step_id!r} waits for its child run",
                      "waiting")


def _invoke_result(step_id: str, output_json: str | None, job: Job[Any, Any] | str) -> Any:
    event = _codec.loads(output_json)  # the child's completion event, None after a timeout
    if event is None:
        raise StepError(step_id, {"name": "InvokeTimeout",
                                  "message": "the invoked run did not finish in time"})
    finished = event["data"]
    if finished.get("status") in ("failed", "cancelled"):  # cancelled: see `_invocations`
        raise StepError(step_id, finished.get("error") or {"name": "Error", "message": ""})
    output = finished.get("output")
    if isinstance(job, Job):
        from stride.executors.inprocess import restore

        return restore(_codec.dumps_str(output), job.handler)
    return output
