"""JSON encoding for everything Stride stores: one fast codec (orjson), one error type.

Pydantic models are stored as their JSON form. Anything else that orjson cannot encode is
refused with a `SerializationError` that names what was being stored and the offending type.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

from stride.errors import SerializationError

_OPTIONS = orjson.OPT_NON_STR_KEYS


class _Unserialisable(TypeError):
    def __init__(self, value: object) -> None:
        super().__init__(type(value).__name__)
        self.type_name = type(value).__qualname__


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise _Unserialisable(value)


def dumps(value: Any, *, what: str = "value") -> bytes:
    """Encode `value` as JSON bytes, or raise a `SerializationError` naming `what`."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except TypeError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, _Unserialisable) else None
        found = f"a value of type {cause.type_name!r}" if cause else str(exc)
        raise SerializationError(
            f"{what} is not JSON-serialisable: found {found}; use dicts, lists, str, int, "
            "float, bool, None or pydantic models"
        ) from exc


def dumps_str(value: Any, *, what: str = "value") -> str:
    """Like `dumps`, as text (what the SQL drivers bind)."""
    return dumps(value, what=what).decode()


def loads(data: str | bytes | None) -> Any:
    """Decode JSON produced by `dumps`; `None` stays `None`."""
    if data is None:
        return None
    return orjson.loads(data)
