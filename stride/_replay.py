"""The pure core of replay: which step a call refers to, and what the memo says about it.

No I/O and no clock here. Given the steps recorded for a run, `Memo.next_call` names the
step a handler is calling (repeated ids get counters: `fetch`, `fetch:1`, ...), checks that
the replay follows the recorded order, and returns the recorded outcome if there is one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stride import _codec
from stride.errors import ConfigurationError, NonDeterminismError
from stride.stores.base import RunStatus, StepRecord

MAX_STEP_ID_LENGTH = 200


class Suspend(BaseException):
    """Stops the handler so the run can be rescheduled. User code must not swallow it,
    hence `BaseException`: `except Exception` in a handler lets it through."""

    def __init__(self, available_at: int, reason: str, status: RunStatus = "queued") -> None:
        super().__init__(reason)
        self.available_at = available_at
        self.reason = reason
        self.status: RunStatus = status


class RunLost(BaseException):
    """This worker no longer holds the run (cancelled, or taken over after its lease expired).

    A `BaseException`, so a handler's `except Exception` cannot swallow it and go on to run
    the next step's body on a run that now belongs to someone else.
    """


@dataclass(frozen=True, slots=True)
class StepCall:
    """One call of a step in this execution: its resolved id, position and recorded outcome."""

    step_id: str
    position: int
    recorded: StepRecord | None

    @property
    def previous_attempts(self) -> int:
        if self.recorded is None or self.recorded.status != "retrying":
            return 0
        return self.recorded.attempts

    @property
    def previous_errors(self) -> list[Any]:
        if self.recorded is None or not self.recorded.errors_json:
            return []
        errors: list[Any] = _codec.loads(self.recorded.errors_json)
        return errors


class Memo:
    """The recorded steps of one run, and the cursor of the current replay through them."""

    def __init__(self, steps: Iterable[StepRecord] = ()) -> None:
        self._by_id: dict[str, StepRecord] = {}
        self._by_position: dict[int, StepRecord] = {}
        self._counters: dict[str, int] = {}
        self._used: set[str] = set()
        self._next_position = 0
        self._lock = threading.Lock()  # sync handlers may call steps from several threads
        for step in steps:
            self.record(step)

    def record(self, step: StepRecord) -> None:
        self._by_id[step.step_id] = step
        self._by_position[step.position] = step

    def recorded(self) -> list[StepRecord]:
        return sorted(self._by_id.values(), key=lambda step: step.position)

    def next_call(self, user_id: str) -> StepCall:
        """Resolve the handler's next call of `user_id`; raise if the replay diverged."""
        check_step_id(user_id)
        with self._lock:
            count = self._counters.get(user_id, 0)
            step_id = user_id if count == 0 else f"{user_id}:{count}"
            while step_id in self._used:  # a user id like "fetch:1" took this counter value
                count += 1
                step_id = f"{user_id}:{count}"
            self._counters[user_id] = count + 1
            self._used.add(step_id)
            position = self._next_position
            self._next_position += 1
        found = self._by_position.get(position)
        if found is not None and found.step_id != step_id:
            raise NonDeterminismError(
                f"replay diverged at step #{position + 1}: the run recorded {found.step_id!r} "
                f"there but the handler now calls {step_id!r}; code outside steps must be "
                "deterministic (move time, randomness and I/O into step.run)"
            )
        return StepCall(step_id, position, self._by_id.get(step_id))


def check_step_id(step_id: object) -> None:
    if not isinstance(step_id, str) or not step_id.strip():
        raise ConfigurationError(f"step id must be a non-empty string, got {step_id!r}")
    if len(step_id) > MAX_STEP_ID_LENGTH:
        raise ConfigurationError(
            f"step id {step_id[:40]!r}... is longer than {MAX_STEP_ID_LENGTH} characters")
