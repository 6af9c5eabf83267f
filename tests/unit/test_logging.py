"""Log formats: every line from a handler can be traced back to its app, job, run and step.

`ctx.logger` is a `RunLogger` bound to the run; inside `step.run` it adds the step and its
attempt. These tests drive that logger directly, the way a handler does.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from stride._current import StepScope, current_step
from stride.context import RunLogger
from stride.errors import ConfigurationError
from stride.logging import JsonFormatter, TextFormatter, configure_logging

BOUND = {"app_id": "porygon", "job_id": "process-context-file", "run_id": "01HRUN",
         "attempt": 0}


@pytest.fixture
def output() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test.stride.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def in_step(step_id: str, attempt: int) -> object:
    return current_step.set(StepScope(step_id, attempt))


def test_json_line_carries_every_bound_field_and_extra(output: tuple) -> None:
    logger, stream, handler = output
    handler.setFormatter(JsonFormatter())
    token = in_step("fetch-file", 2)
    try:
        RunLogger(logger, BOUND).info("fetched %s", "notes.txt", extra={"file_id": "f1"})
    finally:
        current_step.reset(token)  # type: ignore[arg-type]

    entry = json.loads(stream.getvalue())

    assert entry["message"] == "fetched notes.txt"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "test.stride.logging"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    assert {k: entry[k] for k in ("app_id", "job_id", "run_id", "step_id", "attempt")} == {
        "app_id": "porygon", "job_id": "process-context-file", "run_id": "01HRUN",
        "step_id": "fetch-file", "attempt": 2}
    assert entry["file_id"] == "f1"


def test_json_is_one_line_per_record_even_with_a_traceback(output: tuple) -> None:
    logger, stream, handler = output
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("not UTF-8\nsecond line")
    except ValueError:
        RunLogger(logger, BOUND).exception("parse failed")

    lines = stream.getvalue().splitlines()

    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["exc_type"] == "ValueError"
    assert entry["exc_message"] == "not UTF-8\nsecond line"
    assert "Traceback" in entry["exc_info"] and "raise ValueError" in entry["exc_info"]
    assert entry["step_id"] is None  # logged between steps


def test_json_writes_unserialisable_values_as_text(output: tuple) -> None:
    logger, stream, handler = output
    handler.setFormatter(JsonFormatter())

    logger.info("odd", extra={"where": {1, 2}.__class__, "path": object()})

    entry = json.loads(stream.getvalue())
    assert entry["where"] == "<class 'set'>"
    assert entry["path"].startswith("<object object")


def test_text_line_shows_run_fields_compactly(output: tuple) -> None:
    logger, stream, handler = output
    handler.setFormatter(TextFormatter())
    token = in_step("summarise", 1)
    try:
        RunLogger(logger, BOUND).warning("slow summary", extra={"words": 812})
    finally:
        current_step.reset(token)  # type: ignore[arg-type]

    line = stream.getvalue().rstrip("\n")

    assert "WARNING test.stride.logging: slow summary" in line
    assert line.endswith(
        "[job=process-context-file run=01HRUN step=summarise attempt=1 words=812]")
    assert "porygon" not in line  # the app id is the same on every line of a process


def test_text_line_leaves_out_unset_fields_and_keeps_traceback_below(output: tuple) -> None:
    logger, stream, handler = output
    handler.setFormatter(TextFormatter())
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        RunLogger(logger, BOUND).exception("handler failed")

    first, *rest = stream.getvalue().splitlines()

    assert first.endswith("handler failed  [job=process-context-file run=01HRUN attempt=0]")
    assert "step=" not in first
    assert rest[0].startswith("Traceback") and rest[-1] == "ZeroDivisionError: division by zero"


def test_plain_logger_lines_have_no_field_brackets(output: tuple) -> None:
    logger, stream, handler = output
    handler.setFormatter(TextFormatter())

    logger.info("worker started")

    assert stream.getvalue().rstrip().endswith("test.stride.logging: worker started")


def test_configure_logging_replaces_its_own_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        configure_logging("INFO", "text")
        configure_logging("debug", "json")
        ours = [h for h in root.handlers if h not in before]
        configured_level = root.level
        logging.getLogger("stride.worker").debug("run 01H of job: completed")
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)

    assert len(ours) == 1
    assert configured_level == logging.DEBUG
    assert json.loads(stream.getvalue())["message"] == "run 01H of job: completed"


def test_configure_logging_writes_to_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("INFO", "text")
    try:
        swapped = io.StringIO()  # what rich's Live does while it draws
        monkeypatch.setattr(sys, "stderr", swapped)
        logging.getLogger("stride.cli").info("shown above the table")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    assert "shown above the table" in swapped.getvalue()


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "text"), ("INFO", "xml")])
def test_configure_logging_rejects_unknown_values(level: str, fmt: str) -> None:
    with pytest.raises(ConfigurationError, match="is not one of"):
        configure_logging(level, fmt)
