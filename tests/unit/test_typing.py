"""What mypy infers for users of the public API, checked by running mypy itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api as mypy_api

TYPING_DIR = Path(__file__).resolve().parent.parent / "typing"
pytestmark = pytest.mark.slow


def run_mypy(path: Path) -> list[str]:
    stdout, _stderr, _status = mypy_api.run(
        ["--strict", "--no-incremental", "--hide-error-context", "--no-error-summary",
         "--show-absolute-path", str(path)])
    return stdout.splitlines()


def expectations(path: Path, marker: str) -> dict[int, str]:
    found = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.search(rf"# {marker}: (.+)$", line)
        if match:
            found[number] = match.group(1).strip()
    return found


def test_typed_usage_is_accepted_and_infers_the_documented_types() -> None:
    path = TYPING_DIR / "usage.py"
    lines = run_mypy(path)
    errors = [line for line in lines if ": error:" in line]
    assert errors == []
    revealed = {}
    for line in lines:
        match = re.match(r".*:(\d+): note: Revealed type is \"(.+)\"", line)
        if match:
            revealed[int(match.group(1))] = match.group(2)
    for number, expected in expectations(path, "expect").items():
        got = revealed.get(number, "<nothing revealed>")
        simplified = re.sub(r"\b[\w.]+\.(\w+)", r"\1", got).replace("builtins.", "")
        assert simplified == expected, f"line {number}: mypy says {got}"


def test_mistakes_in_typed_usage_are_reported() -> None:
    path = TYPING_DIR / "must_fail.py"
    error_lines = {int(m.group(1)) for line in run_mypy(path)
                   if (m := re.match(r".*:(\d+): error:", line))}
    expected = expectations(path, "error")
    assert expected, "must_fail.py lost its expectations"
    missing = {number: tag for number, tag in expected.items() if number not in error_lines}
    assert missing == {}, f"mypy accepted lines it must reject: {missing}"
