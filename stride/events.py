"""Events: what apps dispatch, and typed event definitions that validate them.

An event is `{id, name, data, user, ts}`. A typed event binds a name to a pydantic model;
dispatch validates `data` against it and handlers receive the model instance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from stride import _codec
from stride.errors import InvalidEventError, SerializationError

DataT = TypeVar("DataT")
ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_EVENT_NAME_LENGTH = 256
DEFAULT_MAX_PAYLOAD_BYTES = 512 * 1024
EVENT_NAME_CHARACTERS = "letters, digits and . _ - / :"
_EVENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:]*$")


@dataclass(frozen=True, slots=True)
class Event(Generic[DataT]):
    """One dispatched event as a handler sees it.

    `data` is the pydantic model for typed events, else the JSON object as a dict.
    `user` is the actor who caused it (optional), `ts` epoch milliseconds.
    """

    id: str
    name: str
    data: DataT
    user: dict[str, Any] | None
    ts: int


@dataclass(frozen=True, slots=True)
class EventType(Generic[ModelT]):
    """A name bound to a pydantic model. Make one with `Stride.event(name, Model)`.

    Example:
        file_uploaded = jobs.event("context/file.uploaded", FileUploaded)
        await jobs.dispatch(file_uploaded, FileUploaded(file_id="f1", ...))
    """

    name: str
    model: type[ModelT]

    def __post_init__(self) -> None:
        validate_event_name(self.name)

    def create(
        self, data: ModelT | Mapping[str, Any], *, id: str | None = None,
        user: Mapping[str, Any] | None = None,
    ) -> OutgoingEvent:
        """An event of this type ready for `dispatch_many` or `step.send_event`."""
        return OutgoingEvent(self.name, data, id=id, user=user)

    def to_json_data(self, data: Any) -> dict[str, Any]:
        """Validate `data` (a model instance or a mapping) and return its JSON form."""
        if isinstance(data, self.model):
            return data.model_dump(mode="json")
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        if not isinstance(data, Mapping):
            raise InvalidEventError(
                f"event {self.name!r}: data must be a {self.model.__name__} or a JSON object, "
                f"got {type(data).__name__}"
            )
        try:
            return self.model.model_validate(dict(data)).model_dump(mode="json")
        except ValidationError as exc:
            raise InvalidEventError(_describe_validation(self.name, exc)) from exc

    def parse(self, data: dict[str, Any]) -> ModelT:
        """Turn stored JSON data back into the model (stored data was validated at dispatch)."""
        return self.model.model_validate(data)


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """An event about to be dispatched: a name, its data and optional id and actor."""

    name: str
    data: Any
    id: str | None = None
    user: Mapping[str, Any] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event in the JSON form the store keeps."""

    id: str
    name: str
    data: dict[str, Any]
    user: dict[str, Any] | None
    ts: int


def validate_event_name(name: object) -> str:
    """Return `name` if it is a valid event name, else raise `InvalidEventError`."""
    if not isinstance(name, str) or not name:
        raise InvalidEventError(f"event name must be a non-empty string, got {name!r}")
    if len(name) > MAX_EVENT_NAME_LENGTH:
        raise InvalidEventError(
            f"event name {name[:40]!r}... is {len(name)} characters; the limit is "
            f"{MAX_EVENT_NAME_LENGTH}"
        )
    if not _EVENT_NAME.fullmatch(name):
        raise InvalidEventError(
            f"event name {name!r} has a character outside {EVENT_NAME_CHARACTERS} "
            "(and must start with a letter or digit), e.g. 'context/file.uploaded'"
        )
    return name


def check_payload_size(name: str, data: dict[str, Any], user: Any, limit: int) -> None:
    """Refuse events whose encoded data and actor exceed `limit` bytes."""
    try:
        size = len(_codec.dumps(data)) + (len(_codec.dumps(user)) if user else 0)
    except SerializationError as exc:
        raise InvalidEventError(f"event {name!r}: {exc}") from exc
    if size > limit:
        raise InvalidEventError(
            f"event {name!r} payload is {size} bytes; the limit is {limit} bytes "
            "(store large content elsewhere and send its id, or raise max_payload_bytes)"
        )


def _describe_validation(name: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        path = ".".join(str(part) for part in error["loc"]) or "(root)"
        problems.append(f"data.{path}: {error['msg']}")
    more = "" if exc.error_count() <= 5 else f" (and {exc.error_count() - 5} more)"
    return f"event {name!r} failed its schema: " + "; ".join(problems) + more
