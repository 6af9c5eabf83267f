"""Log output for Stride processes: readable text for people, one JSON object per line for machines.

`ctx.logger` binds app, job, run, step and attempt to every record it emits (as `extra`
fields). Both formatters here carry those fields, and any other `extra=`, into the output, so
a line from deep inside a step can always be traced back to its run. The `stride` command
calls `configure_logging` from `--log-level` and `--log-format`; apps that configure logging
themselves can use the formatters directly.

Example:
    configure_logging(level="DEBUG", fmt="json")
    # {"ts": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "stride.app.porygon",
    #  "message": "stored summary", "app_id": "porygon", "job_id": "process-context-file",
    #  "run_id": "01HX...", "step_id": "store-result", "attempt": 1}
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from stride.errors import ConfigurationError

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

BOUND_FIELDS = ("app_id", "job_id", "run_id", "step_id", "attempt")
"""The fields `ctx.logger` binds, in the order the text format shows them."""

_TEXT_LABELS = {"job_id": "job", "run_id": "run", "step_id": "step", "attempt": "attempt"}
# app_id is left out of text lines: one process almost always serves one app, so it is noise
# there; the JSON format keeps it for log stores that collect many apps.
_TEXT_HIDDEN = frozenset({"app_id"})

# Every attribute a bare LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The bound and `extra=` fields of a record: bound fields first, then the rest by name."""
    extras = {key: value for key, value in vars(record).items()
              if key not in _RECORD_ATTRIBUTES and not key.startswith("_")}
    bound = {key: extras.pop(key) for key in BOUND_FIELDS if key in extras}
    return bound | dict(sorted(extras.items()))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, every bound/extra field, exc info.

    Values JSON cannot represent are written as their `str()`, so a log call never fails
    because of what it carries.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        entry.update(self._exception_fields(record))
        return json.dumps(entry, default=str, ensure_ascii=False)

    def _exception_fields(self, record: logging.LogRecord) -> dict[str, str]:
        fields: dict[str, str] = {}
        if record.exc_info and record.exc_info[0] is not None:
            fields["exc_type"] = record.exc_info[0].__name__
            fields["exc_message"] = str(record.exc_info[1])
            fields["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc_info"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        return fields


class TextFormatter(logging.Formatter):
    """`12:00:01.234 INFO  stride.worker: message  [job=... run=... step=... attempt=2]`.

    Fields that are unset (`step=None` between steps) are left out to keep lines short.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-5s %(name)s: %(message)s",
                         datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{_TEXT_LABELS.get(key, key)}={value}"
                          for key, value in extra_fields(record).items()
                          if value is not None and key not in _TEXT_HIDDEN)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head}  [{fields}]{newline}{rest}"


class CurrentStderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a record is emitted.

    A plain StreamHandler keeps the stream it was built with; rich's live display swaps
    `sys.stderr` for a proxy that prints above the table, and only a handler that looks the
    stream up per record goes through that proxy instead of tearing the table apart.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str | int = "INFO", fmt: str = "text") -> logging.Handler:
    """Send every log record at `level` or above to stderr, as `text` or `json` lines.

    Idempotent: calling it again replaces the handler it installed before (and only that one),
    so the CLI and tests can reconfigure without stacking duplicate output.
    """
    numeric = _level_number(level)
    if fmt not in LOG_FORMATS:
        raise ConfigurationError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_stride_handler", False)]:
        root.removeHandler(old)
    handler = CurrentStderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._stride_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


def _level_number(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    name = str(level).strip().upper()
    if name not in LOG_LEVELS:
        raise ConfigurationError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    number: int = logging.getLevelName(name)
    return number


def _iso_utc(created: float) -> str:
    stamp = datetime.fromtimestamp(created, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
