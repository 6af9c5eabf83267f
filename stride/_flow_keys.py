"""A job's flow-control expressions evaluated against one event, at dispatch.

The app holds one `FlowKeys` per job that has flow control (built once, when the job is
registered) and attaches `run_flow(event)` to each new run: the key values and limits the
store enforces with indexed SQL (stride._flow_decide). Jobs without flow control get no
`RunFlow`, so their runs take the store's plain, fastest path.

A key whose expression fails on an event (a missing field) counts as the empty key: those
events share one limit, rather than the dispatch failing for a job the caller may not know.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from stride import _codec
from stride._flow_decide import Batched, Debounced, Idempotent, KeyedRate, RunFlow, Unique
from stride._limiters import Rate, clamp_priority_ms
from stride.expressions import Expression, ExpressionError
from stride.flow import MAX_PRIORITY_SECONDS, Concurrency, FlowControl, RateLimit, Throttle
from stride.jobs import Job

_PATH = re.compile(r"event((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
"""`idempotency=`: one run per key per 24 hours, as in Inngest."""


def has_flow(flow: FlowControl) -> bool:
    """Whether runs of a job need the store's flow-control path (a plain `concurrency=N`
    does not: the claim enforces it per job)."""
    return is_keyed(flow) or any(option is not None for option in (
        flow.throttle, flow.rate_limit, flow.debounce, flow.priority, flow.batch_events,
        flow.idempotency, flow.singleton))


def is_keyed(flow: FlowControl) -> bool:
    """Whether a job has a concurrency limit per key or shared with other jobs."""
    return any(limit.key is not None or limit.scope == "account" for limit in flow.concurrency)


KeyReader = Callable[[Mapping[str, Any]], str]
"""An option's key expression made ready for events: the event (as a dict) to its key."""


def key_reader(expression: Expression | None) -> KeyReader:
    """How to read one option's key off an event, decided once per job, not per event.

    The value is the key: strings as they are, other values as JSON. A plain path
    (`event.data.user_id`) is looked up in the event's dicts, which gives what CEL gives
    (a missing field is an error either way) at a fraction of the cost: the CEL binding
    converts the whole event on every call (~90 us against ~1 us).
    """
    if expression is None:
        return _no_key
    path = _plain_path(expression.source)
    if path is None:
        return functools.partial(_evaluated_key, expression)
    return functools.partial(_path_key, path)


def key_value(expression: Expression | None, event: Mapping[str, Any]) -> str:
    """An expression's value for one event as a key (see `key_reader`)."""
    return key_reader(expression)(event)


def _no_key(event: Mapping[str, Any]) -> str:
    return ""


def _evaluated_key(expression: Expression, event: Mapping[str, Any]) -> str:
    try:
        return _as_key(expression.evaluate(event=event))
    except ExpressionError:
        return ""


def _path_key(path: tuple[str, ...], event: Mapping[str, Any]) -> str:
    value: Any = event
    try:
        for part in path:
            value = value[part]
    except (KeyError, TypeError, IndexError):  # a missing field; a path through a scalar
        return ""
    return _as_key(value)


def _as_key(value: Any) -> str:
    return value if isinstance(value, str) else _codec.dumps_str(value)


@functools.lru_cache(maxsize=256)
def _plain_path(source: str) -> tuple[str, ...] | None:
    """`event.data.user_id` as ("data", "user_id"); None for anything but a plain path."""
    match = _PATH.fullmatch(source.strip())
    return tuple(match.group(1)[1:].split(".")) if match else None


def concurrency_key(app_id: str, job_id: str, index: int, limit: Concurrency, value: str) -> str:
    """The key runs hold while leased: per job (`app/job#i`), or shared by name."""
    base = f"account/{limit.name}" if limit.scope == "account" else f"{app_id}/{job_id}#{index}"
    return f"{base}:{value}" if limit.key is not None else base


def describe_period(period_ms: int) -> str:
    """`500ms`, `5s`, `1m`, `1h30m`: a period as people write it."""
    if period_ms % 1000:
        return f"{period_ms}ms"
    seconds = period_ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return str(timedelta(seconds=seconds)) if seconds >= 60 else f"{seconds}s"


class FlowKeys:
    """Evaluates one job's flow-control options against events.

    Everything that does not depend on the event (which options are set, each key's
    prefix and reader, the limiters' rates and labels) is worked out once, when the job
    is registered: a dispatch of many events pays per event only for reading its keys.
    """

    __slots__ = ("_concurrency", "_flow", "_keys_only", "_rate_limit", "_throttle")

    def __init__(self, job: Job[Any, Any], app_id: str) -> None:
        flow = job.flow
        self._flow = flow
        self._concurrency = tuple(
            (concurrency_key(app_id, job.id, index, limit, ""),  # the key's value goes last
             key_reader(limit.compiled_key) if limit.key is not None else None, limit.limit)
            for index, limit in enumerate(flow.concurrency)) if is_keyed(flow) else ()
        self._keys_only = not any(option is not None for option in (
            flow.priority, flow.throttle, flow.rate_limit, flow.idempotency, flow.singleton,
            flow.debounce, flow.batch_events))
        self._throttle = _limiter(flow.throttle)
        self._rate_limit = _limiter(flow.rate_limit)

    def run_flow(self, event: Mapping[str, Any]) -> RunFlow:
        concurrency = tuple((prefix + read(event) if read is not None else prefix, limit)
                            for prefix, read, limit in self._concurrency)
        if self._keys_only:
            return RunFlow(concurrency)
        flow = self._flow
        return RunFlow(
            concurrency=concurrency,
            priority_ms=(clamp_priority_ms(_value(flow.priority.compiled, event),
                                           MAX_PRIORITY_SECONDS) if flow.priority else 0),
            throttle=self._throttle(event) if self._throttle else None,
            rate_limit=self._rate_limit(event) if self._rate_limit else None,
            idempotency=(Idempotent(key_value(flow.idempotency, event), IDEMPOTENCY_WINDOW_MS)
                         if flow.idempotency is not None else None),
            singleton=(Unique(key_value(flow.singleton.compiled_key, event), flow.singleton.mode)
                       if flow.singleton else None),
            debounce=(Debounced(key_value(flow.debounce.compiled_key, event),
                                flow.debounce.period_ms, flow.debounce.timeout_ms)
                      if flow.debounce else None),
            batch=(Batched(key_value(flow.batch_events.compiled_key, event),
                           flow.batch_events.max_size, flow.batch_events.timeout_ms)
                   if flow.batch_events else None))


def _limiter(option: Throttle | RateLimit | None,
             ) -> Callable[[Mapping[str, Any]], KeyedRate] | None:
    """A throttle's or rate limit's `KeyedRate` for an event: its rate and label made once."""
    if option is None:
        return None
    burst = option.burst if isinstance(option, Throttle) else 0
    rate = Rate.of(limit=option.limit, period_ms=option.period_ms, extra=burst)
    label = _label(option.limit, option.period_ms, burst)
    read = key_reader(option.compiled_key)
    return lambda event: KeyedRate(read(event), rate, label)


def _value(expression: Expression | None, event: Mapping[str, Any]) -> Any:
    if expression is None:
        return None
    try:
        return expression.evaluate(event=event)
    except ExpressionError:
        return None


def _label(limit: int, period_ms: int, burst: int) -> str:
    text = f"{limit} per {describe_period(period_ms)}"
    return f"{text} (+{burst} burst)" if burst else text
