"""Expressions over events in the Common Expression Language (CEL).

Keys, filters and match conditions are CEL (`event.data.user_id`, `event.data.plan == "pro"`),
evaluated by the `common-expression-language` package (a compiled Rust implementation).
Every expression is compiled once, when the job is defined: a syntax error fails at import
time with the job id, the expression and the position, never at the first event.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from stride.errors import ConfigurationError

_POSITION = re.compile(r"<input>:(\d+):(\d+)")


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled CEL expression; `evaluate` binds variables such as `event` and `async`."""

    source: str
    _program: Any

    def evaluate(self, **variables: Any) -> Any:
        try:
            return self._program.execute(variables)
        except Exception as exc:  # a missing field, a type mismatch at run time
            raise ExpressionError(f"expression {self.source!r} failed: {exc}") from exc

    def is_true(self, **variables: Any) -> bool:
        """Evaluate as a filter; anything but a boolean true (incl. errors) counts as false."""
        try:
            return self.evaluate(**variables) is True
        except ExpressionError:
            return False


class ExpressionError(ConfigurationError):
    """A CEL expression failed to compile or to evaluate."""


def compile_expression(source: str, *, owner: str) -> Expression:
    """Compile `source` (cached), or raise naming `owner` (e.g. "job 'resize'") and the position."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError(f"{owner}: expression must be a non-empty string, got {source!r}")
    try:
        return _compile(source)
    except ValueError as exc:
        raise ExpressionError(f"{owner}: bad expression {source!r} ({_first_line(exc)})") from exc


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> Expression:
    import cel  # imported on first use: it costs ~1 s of start-up for every CLI command

    return Expression(source, cel.compile(source))


def _first_line(exc: Exception) -> str:
    text = str(exc)
    position = _POSITION.search(text)
    detail = text.split("ERROR:", 1)[-1].split("\n", 1)[0].strip()
    detail = _POSITION.sub("", detail).lstrip(": ")
    if position:
        return f"line {position.group(1)}, column {position.group(2)}: {detail}"
    return detail
