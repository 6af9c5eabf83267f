"""Flow-control decisions as pure functions: no I/O, no clock, the same for every store.

At dispatch the app evaluates each job's keys against the event and attaches a `RunFlow`
(key values, limits) to the new run. In its publish transaction a store loads the state
those runs touch (`state_keys`), the runs that state points at, and calls `plan_publish`:
the plan says which runs to insert (delayed, or 'skipped' with the reason), which pending
runs to change (debounce, batch), which to cancel (singleton), which events to link to a
batch run, and the new state. Options are applied in this order, each only if set:
rate limit, idempotency, singleton, debounce, batch, throttle, priority.

At claim time `admit` decides which candidate runs fit their concurrency keys. A run whose
key is full is *parked*: its rank is moved past `PARK`, out of the part of the queue that
claims scan, and comes back (`unpark_counts`) when a run holding that key lets go of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from stride import _codec
from stride._limiters import Rate, debounce_due, rate_limit, throttle

if TYPE_CHECKING:
    from stride.stores.base import NewRun

PARK = 1 << 52
"""Added to a parked run's rank: far past every real rank (epoch ms, about 2**41), so a claim
that scans ranks below it never meets parked runs, whatever their number."""
THROTTLE, RATE, IDEMPOTENCY, SINGLETON, DEBOUNCE, BATCH = (
    "throttle", "rate", "idempotency", "singleton", "debounce", "batch")
_FINISHED = frozenset({"completed", "failed", "cancelled", "skipped"})

StateKey = tuple[str, str, str, str]
"""(app_id, job_id, kind, key value) of one limiter's state."""


@dataclass(frozen=True, slots=True)
class KeyedRate:
    key: str
    rate: Rate
    label: str
    """How people wrote it, for reasons: `2 per 1m`."""


@dataclass(frozen=True, slots=True)
class Debounced:
    key: str
    period_ms: int
    timeout_ms: int | None


@dataclass(frozen=True, slots=True)
class Batched:
    key: str
    max_size: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Unique:
    key: str
    mode: str


@dataclass(frozen=True, slots=True)
class Idempotent:
    key: str
    window_ms: int


@dataclass(frozen=True, slots=True)
class RunFlow:
    """A new run's flow control, with every key already evaluated against its event.

    `concurrency` holds (key, limit) pairs, at most two: the run may be claimed only while
    fewer than `limit` runs holding `key` are leased.
    """

    concurrency: tuple[tuple[str, int], ...] = ()
    priority_ms: int = 0
    throttle: KeyedRate | None = None
    rate_limit: KeyedRate | None = None
    idempotency: Idempotent | None = None
    singleton: Unique | None = None
    debounce: Debounced | None = None
    batch: Batched | None = None


def is_stateless(flow: RunFlow) -> bool:
    """Concurrency keys and priority only: a run inserted as it comes (its keys beside it,
    its rank moved by the priority), with no limiter state to read or write."""
    return (flow.rate_limit is None and flow.idempotency is None and flow.singleton is None
            and flow.debounce is None and flow.batch is None and flow.throttle is None)


def without_skips(flow: RunFlow) -> RunFlow:
    """The options that always start this very run, with its own event: concurrency keys,
    priority and throttle (which only delays). What an invoked run takes, since its parent
    waits for it by its event (a skipped, debounced or batched child would never report
    back), and what a replay takes (an operator's explicit request is not rate limited)."""
    return RunFlow(concurrency=flow.concurrency, priority_ms=flow.priority_ms,
                   throttle=flow.throttle)


def key_columns(flow: RunFlow | None) -> tuple[str | None, int | None, str | None, int | None]:
    """A run's concurrency keys as the stores keep them: (key, limit, second key, its
    limit), None where the run has none."""
    keys = flow.concurrency if flow is not None else ()
    ckey, clim = keys[0] if keys else (None, None)
    ckey2, clim2 = keys[1] if len(keys) > 1 else (None, None)
    return ckey, clim, ckey2, clim2


@dataclass(frozen=True, slots=True)
class FlowState:
    """One limiter's stored state. `at`: throttle/rate limit: tat (epoch µs); idempotency:
    when the key may run again (ms); debounce/batch: when the burst began (ms)."""

    at: int | None = None
    n: int = 0
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A run some state points at, as stored now."""

    status: str
    started: bool
    event_id: str

    @property
    def open(self) -> bool:
        """Never claimed yet: a debounce or a batch can still change it."""
        return self.status == "queued" and not self.started

    @property
    def alive(self) -> bool:
        return self.status not in _FINISHED


class RunInsert(NamedTuple):
    """A run to insert. A named tuple, not a frozen dataclass: a keyed publish makes one per
    run, and a frozen dataclass of 13 fields took 2.3 us to build, a tuple 0.5 us."""

    id: str
    app_id: str
    job_id: str
    event_id: str
    status: str
    available_at: int
    rank: int
    reason: str | None
    ckey: str | None = None
    clim: int | None = None
    ckey2: str | None = None
    clim2: int | None = None
    ended_at: int | None = None


@dataclass(frozen=True, slots=True)
class RunChange:
    """A pending run moved (debounce) or grown (batch): its event, due time and reason."""

    id: str
    event_id: str | None
    available_at: int | None
    rank: int | None
    reason: str


@dataclass(slots=True)
class PublishPlan:
    inserts: list[RunInsert] = field(default_factory=list)
    changes: dict[str, RunChange] = field(default_factory=dict)
    cancels: dict[str, tuple[str, str]] = field(default_factory=dict)
    """run id -> (reason, error JSON) of runs a singleton replaced."""
    links: list[tuple[str, int, str]] = field(default_factory=list)
    """(run id, position, event id): the events of batch runs."""
    states: dict[StateKey, FlowState | None] = field(default_factory=dict)
    """The states to write; None deletes."""


def state_keys(runs: Iterable[NewRun]) -> list[StateKey]:
    """Every state the runs' flow control reads, sorted (stores lock them in this order)."""
    keys: set[StateKey] = set()
    for run in runs:
        flow = run.flow
        if flow is None:
            continue
        for kind, option in ((RATE, flow.rate_limit), (IDEMPOTENCY, flow.idempotency),
                             (SINGLETON, flow.singleton), (DEBOUNCE, flow.debounce),
                             (BATCH, flow.batch), (THROTTLE, flow.throttle)):
            if option is not None:
                keys.add((run.app_id, run.job_id, kind, option.key))
    return sorted(keys)


def pending_run_ids(states: Mapping[StateKey, FlowState | None]) -> list[str]:
    """The runs that loaded states point at (whose status the plan needs), sorted."""
    return sorted({state.run_id for key, state in states.items()
                   if state is not None and state.run_id is not None
                   and key[2] in (SINGLETON, DEBOUNCE, BATCH)})


def plan_publish(runs: Sequence[NewRun], *, now: int,
                 states: Mapping[StateKey, FlowState | None],
                 pending: Mapping[str, PendingRun]) -> PublishPlan:
    """Decide every run of a publish in order; later runs see the state earlier ones left."""
    planner = _Planner(now, states, pending)
    for run in runs:
        planner.decide(run)
    return planner.plan


class _Planner:
    def __init__(self, now: int, states: Mapping[StateKey, FlowState | None],
                 pending: Mapping[str, PendingRun]) -> None:
        self.now = now
        self.states = dict(states)
        self.pending = dict(pending)
        self.plan = PublishPlan()

    def _state(self, run: NewRun, kind: str, key: str) -> tuple[StateKey, FlowState | None]:
        state_key = (run.app_id, run.job_id, kind, key)
        return state_key, self.states.get(state_key)

    def _set(self, key: StateKey, state: FlowState | None) -> None:
        self.states[key] = state
        self.plan.states[key] = state

    def _skip(self, run: NewRun, reason: str, event_id: str | None = None) -> None:
        """A 'skipped' run row saying why the event started no run (`event_id`: another
        event than the run's own, e.g. the one a debounce replaced; the row reuses the new
        run's id, as that run is never created)."""
        self.plan.inserts.append(RunInsert(
            run.id, run.app_id, run.job_id, event_id or run.event_id, "skipped", self.now,
            self.now, reason, ended_at=self.now))

    def decide(self, run: NewRun) -> None:
        flow = run.flow
        assert flow is not None
        if is_stateless(flow):
            # no state to read or write, and no state can point at the run (so it needs no
            # PendingRun): a plain insert (a keyed publish of 20,000 runs spent 0.1 s in
            # the option checks below)
            self._insert_row(run, flow, run.available_at, None)
            return
        skipped = (self._rate_limited(run, flow) or self._duplicate(run, flow)
                   or self._singleton_skips(run, flow))
        if skipped is not None:
            self._skip(run, skipped)
            return
        if self._debounced_into_pending(run, flow) or self._batched_into_pending(run, flow):
            return
        due, reasons = run.available_at, []
        for option_due, reason in (self._debounce_start(run, flow),
                                   self._batch_start(run, flow), self._throttle(run, flow)):
            due = max(due, option_due)
            if reason:
                reasons.append(reason)
        self._insert(run, flow, due, "; ".join(reasons) or None)

    def _insert(self, run: NewRun, flow: RunFlow, due: int, reason: str | None) -> None:
        self._insert_row(run, flow, due, reason)
        self.pending[run.id] = PendingRun("queued", False, run.event_id)

    def _insert_row(self, run: NewRun, flow: RunFlow, due: int, reason: str | None) -> None:
        self.plan.inserts.append(RunInsert(
            run.id, run.app_id, run.job_id, run.event_id, "queued", due,
            due - flow.priority_ms, reason, *key_columns(flow)))

    # -- options that skip the run -------------------------------------------------

    def _rate_limited(self, run: NewRun, flow: RunFlow) -> str | None:
        if flow.rate_limit is None:
            return None
        key, state = self._state(run, RATE, flow.rate_limit.key)
        allowed, tat = rate_limit(state.at if state else None, self.now, flow.rate_limit.rate)
        if not allowed:
            return f"rate limited: over {flow.rate_limit.label}{_for(flow.rate_limit.key)}"
        self._set(key, FlowState(at=tat))
        return None

    def _duplicate(self, run: NewRun, flow: RunFlow) -> str | None:
        if flow.idempotency is None:
            return None
        key, state = self._state(run, IDEMPOTENCY, flow.idempotency.key)
        if state is not None and state.at is not None and state.at > self.now:
            return (f"idempotency: key {flow.idempotency.key!r} already started run "
                    f"{state.run_id} within {flow.idempotency.window_ms // 3_600_000} h")
        self._set(key, FlowState(at=self.now + flow.idempotency.window_ms, run_id=run.id))
        return None

    def _singleton_skips(self, run: NewRun, flow: RunFlow) -> str | None:
        if flow.singleton is None:
            return None
        key, state = self._state(run, SINGLETON, flow.singleton.key)
        alive = self._alive(state)
        if alive is not None and flow.singleton.mode == "skip":
            return f"singleton: run {alive}{_for(flow.singleton.key)} has not finished"
        if alive is not None:
            reason = f"singleton: replaced by run {run.id}"
            self.plan.cancels[alive] = (reason, _codec.dumps_str(
                {"name": "Cancelled", "message": reason, "by": "singleton", "at": self.now}))
            self.plan.changes.pop(alive, None)
            old = self.pending[alive]
            self.pending[alive] = PendingRun("cancelled", old.started, old.event_id)
        self._set(key, FlowState(run_id=run.id))
        return None

    def _alive(self, state: FlowState | None) -> str | None:
        if state is None or state.run_id is None:
            return None
        found = self.pending.get(state.run_id)
        return state.run_id if found is not None and found.alive else None

    # -- options that merge the run into a pending one -----------------------------

    def _open(self, state: FlowState | None) -> str | None:
        if state is None or state.run_id is None:
            return None
        found = self.pending.get(state.run_id)
        return state.run_id if found is not None and found.open else None

    def _debounced_into_pending(self, run: NewRun, flow: RunFlow) -> bool:
        option = flow.debounce
        if option is None:
            return False
        key, state = self._state(run, DEBOUNCE, option.key)
        target = self._open(state)
        if state is None or target is None:
            return False
        first = state.at if state.at is not None else self.now
        due = max(debounce_due(first, self.now, option.period_ms, option.timeout_ms), self.now)
        replaced = self.pending[target].event_id
        self._skip(run, f"debounced: a later event ({run.event_id}) replaced this one in run "
                        f"{target}", replaced)
        count = state.n + 1
        self.plan.changes[target] = RunChange(
            target, run.event_id, due, due - flow.priority_ms,
            f"debounced: {count} events, runs with the last")
        self.pending[target] = PendingRun("queued", False, run.event_id)
        self._set(key, FlowState(at=first, n=count, run_id=target))
        return True

    def _batched_into_pending(self, run: NewRun, flow: RunFlow) -> bool:
        option = flow.batch
        if option is None:
            return False
        key, state = self._state(run, BATCH, option.key)
        target = self._open(state)
        if state is None or target is None or state.n >= option.max_size:
            return False
        self.plan.links.append((target, state.n, run.event_id))
        count = state.n + 1
        if count >= option.max_size:
            self.plan.changes[target] = RunChange(target, None, self.now,
                                                  self.now - flow.priority_ms,
                                                  f"batch: {count} events (full)")
            self._set(key, None)
        else:
            self.plan.changes[target] = RunChange(target, None, None, None,
                                                  f"batch: {count} events")
            self._set(key, FlowState(at=state.at, n=count, run_id=target))
        return True

    # -- options that start a new run, maybe later -----------------------------------

    def _debounce_start(self, run: NewRun, flow: RunFlow) -> tuple[int, str | None]:
        option = flow.debounce
        if option is None:
            return self.now, None
        key, _ = self._state(run, DEBOUNCE, option.key)
        self._set(key, FlowState(at=self.now, n=1, run_id=run.id))
        due = debounce_due(self.now, self.now, option.period_ms, option.timeout_ms)
        return due, "debounced: 1 event, runs with the last"

    def _batch_start(self, run: NewRun, flow: RunFlow) -> tuple[int, str | None]:
        option = flow.batch
        if option is None:
            return self.now, None
        self.plan.links.append((run.id, 0, run.event_id))
        if option.max_size <= 1:
            return self.now, "batch: 1 event (full)"
        key, _ = self._state(run, BATCH, option.key)
        self._set(key, FlowState(at=self.now, n=1, run_id=run.id))
        return self.now + option.timeout_ms, "batch: 1 event"

    def _throttle(self, run: NewRun, flow: RunFlow) -> tuple[int, str | None]:
        option = flow.throttle
        if option is None:
            return self.now, None
        key, state = self._state(run, THROTTLE, option.key)
        start, tat = throttle(state.at if state else None, self.now, option.rate)
        self._set(key, FlowState(at=tat))
        if start <= self.now:
            return self.now, None
        return start, (f"throttled: delayed {start - self.now} ms by {option.label}"
                       f"{_for(option.key)}")


def _for(key: str) -> str:
    return f" for key {key!r}" if key else ""


# -- claims: which candidates fit their concurrency keys ---------------------------------


COLLECT_SECONDS = 2.0
"""How often a process's keyed claim also deletes the run_keys rows of finished runs."""
COLLECT_OVERLAP_SECONDS = 5.0
"""How far each collection also goes back over the previous one's window: a run stamped
ended before that collection but committed after it is taken by the next."""


class ClaimState:
    """What a process's keyed claims remember, on either store: where the round robin over
    keys with parked runs goes on, and when the run_keys rows of finished runs were last
    collected."""

    def __init__(self) -> None:
        self.cursor = ""
        self._collected = self._previous = 0.0

    def collect_since(self) -> int | None:
        """Every COLLECT_SECONDS, the time (ms) since which finished runs' rows go; else None."""
        now = time.monotonic()
        if now - self._collected < COLLECT_SECONDS:
            return None
        since, self._collected = self._collected, now
        self._previous = since
        back = now - since + COLLECT_OVERLAP_SECONDS if since else 60.0  # the first time: a minute
        return time.time_ns() // 1_000_000 - int(back * 1000)

    def collect_failed(self) -> None:
        """The last collection did not happen: the next one goes back as far."""
        self._collected = self._previous


@dataclass(frozen=True, slots=True)
class Candidate:
    """A due run a claim considers, in rank order."""

    run_id: str
    job_id: str
    keys: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class Admission:
    taken: list[str] = field(default_factory=list)
    parked: list[tuple[str, str, int]] = field(default_factory=list)
    """(run id, the full key, its limit): runs to park until that key frees a slot."""
    full: dict[str, int] = field(default_factory=dict)
    """Keys found full (key -> limit)."""
    held_jobs: set[str] = field(default_factory=set)
    """Jobs whose job-wide limit held a candidate back (left queued, not parked)."""
    running: dict[str, int] = field(default_factory=dict)
    """Leased runs per key, counting those taken now."""
    job_free: dict[str, int] = field(default_factory=dict)
    """Free slots left per job with a job-wide limit."""


def admit(candidates: Iterable[Candidate], running: Mapping[str, int],
          job_free: Mapping[str, int], limit: int | None = None) -> Admission:
    """Take candidates in order while every key they hold has a free slot (and their job,
    if it has a job-wide limit in `job_free`); park those whose key is full. With `limit`,
    stop once that many are taken (the rest are left as they are)."""
    result = Admission(running=dict(running), job_free=dict(job_free))
    free = result.job_free
    for candidate in candidates:
        if limit is not None and len(result.taken) >= limit:
            break
        full = next(((key, limit) for key, limit in candidate.keys
                     if result.running.get(key, 0) >= limit), None)
        if full is not None:
            result.parked.append((candidate.run_id, *full))
            result.full[full[0]] = full[1]
            continue
        if free.get(candidate.job_id, 1) <= 0:
            result.held_jobs.add(candidate.job_id)
            continue
        if candidate.job_id in free:
            free[candidate.job_id] -= 1
        for key, _ in candidate.keys:
            result.running[key] = result.running.get(key, 0) + 1
        result.taken.append(candidate.run_id)
    return result


def unpark_counts(freed: Mapping[str, int], running: Mapping[str, int]) -> dict[str, int]:
    """How many parked runs to release per key that some run let go of: its free slots."""
    counts = {key: limit - running.get(key, 0) for key, limit in freed.items()}
    return {key: count for key, count in counts.items() if count > 0}


BACKLOG = 3
"""Candidates of one full key met in a single claim that mark it as having a backlog: its
other due runs are then parked at once (so a claim steps over a backlog once, instead of a
window at a time). Fewer means a key that was just briefly full: parking every run it has
queued would only make them wait for slots that free up again at once."""


def backlogs(admission: Admission, at_least: int = BACKLOG) -> dict[str, int]:
    """The full keys with a backlog (key -> limit): see BACKLOG."""
    met: dict[str, int] = {}
    for _, key, _ in admission.parked:
        met[key] = met.get(key, 0) + 1
    return {key: limit for key, limit in admission.full.items() if met.get(key, 0) >= at_least}


def to_park(admission: Admission, wanted: int) -> list[tuple[str, str, int]]:
    """The candidates to park: all that were held back by a full key if they kept the claim
    from taking `wanted` runs; else only those of keys with a backlog. A key that was full
    only for a moment (its run takes milliseconds) would otherwise cost each of its runs a
    park and a release; left at the head of the queue, the next claim meets them first."""
    if len(admission.taken) < wanted:
        return admission.parked
    backlog = backlogs(admission)
    return [entry for entry in admission.parked if entry[1] in backlog]


def park_reason(key: str, limit: int) -> str:
    return f"concurrency: waited for key {key!r} (limit {limit})"
