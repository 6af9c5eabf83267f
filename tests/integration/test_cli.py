"""The `stride` command, run as a real subprocess the way people and scripts run it.

Every test uses its own SQLite file (STRIDE_DATABASE_URL), so the commands find the same
database without flags, exactly as in a shell session.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.porygon.app import create_app
from stride import Run, Stride
from stride._audit import AuditRecord
from stride._cli_db import use_database
from stride.stores.base import open_store_for_url

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps_cli.flaky_steps:jobs"
EXAMPLE = "examples.porygon.app:jobs"


def command_env(database_url: str, **extra: str) -> dict[str, str]:
    # a wide terminal so that tables never wrap a run id across lines
    return {**os.environ, "STRIDE_DATABASE_URL": database_url, "COLUMNS": "200", **extra}


def stride(database_url: str, *args: str, timeout: float = 60,
           **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stride", *args], cwd=ROOT,
                          env=command_env(database_url, **extra_env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def table_rows(output: str) -> list[list[str]]:
    """The cells of the body rows of every table in `output` (columns are 2+ spaces apart)."""
    rows: list[list[str]] = []
    in_body = False
    for line in output.splitlines():
        if line.strip().startswith("───"):
            in_body = True
        elif not line.strip():
            in_body = False
        elif in_body:
            rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stride: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def wait_until_finished(database_url: str, run_id: str, timeout: float = 30) -> Run:
    async def wait() -> Run:
        app = Stride("observer", database_url=database_url)
        try:
            return await app.wait_for(run_id, timeout=timeout)
        finally:
            await app.aclose()

    return asyncio.run(wait())


async def dispatch(database_url: str, name: str, *, times: int) -> None:
    """Set-up through the Python API, where the CLI is not what is being tested."""
    from tests.integration.apps_cli.flaky_steps import jobs

    app = use_database(jobs, database_url)
    for _ in range(times):
        await app.dispatch(name, {})
    await app.aclose()


async def upload_and_finish(database_url: str, file_id: str) -> str:
    """Run one Porygon upload to its end in this process; return the run id."""
    app = create_app(database_url=database_url)
    async with app.worker():
        [event_id] = await app.dispatch("context/file.uploaded", {
            "file_id": file_id, "context_id": "ctx-inbox", "uploaded_by_id": "u1"})
        [run] = await app.get_runs(event_id=event_id)
        await app.wait_for(run.id)
    await app.aclose()
    return run.id


@pytest.fixture
def output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STRIDE_EXAMPLE_OUTPUT", str(tmp_path / "out"))
    return tmp_path / "out"


@pytest.fixture
def worker(sqlite_url: str) -> Iterator[subprocess.Popen[str]]:
    """`stride worker APP` in the background; stopped with SIGTERM like a service manager."""
    process = subprocess.Popen([sys.executable, "-m", "stride", "worker", APP], cwd=ROOT,
                               env=command_env(sqlite_url), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


# -- send, worker, runs, run ------------------------------------------------------------


def test_send_prints_the_event_id_and_the_runs_it_triggered(sqlite_url: str) -> None:
    result = stride(sqlite_url, "send", "test/three-steps", "--data", '{"word": "hi"}',
                    "--app", APP)

    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9A-Z]{26}\n", result.stdout)
    assert re.search(r"triggered run [0-9A-Z]{26} of job three-steps", result.stderr)


def test_send_without_app_stores_the_event_and_says_nothing_ran(sqlite_url: str) -> None:
    result = stride(sqlite_url, "send", "test/three-steps", "--id", "evt-1")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "evt-1\n"
    assert "no job was triggered" in result.stderr
    assert "no runs match" in stride(sqlite_url, "runs").stdout


def test_worker_runs_sent_events_and_run_shows_every_attempt(
        sqlite_url: str, worker: subprocess.Popen[str]) -> None:
    sent = stride(sqlite_url, "send", "test/three-steps", "--app", APP)
    match = re.search(r"triggered run (\S+)", sent.stderr)
    assert match, sent.stderr
    run_id = match.group(1)

    assert wait_until_finished(sqlite_url, run_id).status == "completed"
    worker.send_signal(signal.SIGTERM)
    _, worker_log = worker.communicate(timeout=30)
    assert worker.returncode == 0, worker_log
    assert "stopped" in worker_log

    listed = stride(sqlite_url, "runs")
    [row] = table_rows(listed.stdout)
    assert row[:4] == [run_id, "three-steps", "completed", "3"]

    shown = stride(sqlite_url, "run", run_id)
    assert shown.returncode == 0, shown.stderr
    steps = {row[0]: row for row in table_rows(shown.stdout)}
    assert {name: steps[name][2] for name in ("first", "flaky", "last")} == {
        "first": "1", "flaky": "3", "last": "1"}
    assert "#1 FlakyError: attempt 1 fails on purpose" in shown.stdout
    assert "#2 FlakyError: attempt 2 fails on purpose" in shown.stdout
    assert '"third": "THIRD TIME LUCKY"' in shown.stdout


def test_run_shows_the_error_and_traceback_of_a_failed_run(sqlite_url: str,
                                                           output_dir: Path) -> None:
    run_id = asyncio.run(upload_and_finish(sqlite_url, "empty"))

    shown = stride(sqlite_url, "run", run_id)

    assert shown.returncode == 0, shown.stderr
    assert "failed" in shown.stdout
    assert "StepError: step 'parse-document' failed: NonRetriableError: empty.txt is empty" \
        in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout  # the run's error, in full


def test_cancel_and_replay_runs_from_the_command_line(sqlite_url: str) -> None:
    asyncio.run(dispatch(sqlite_url, "test/three-steps", times=3))
    first, *others = sorted(run.id for run in _runs(sqlite_url))

    one = stride(sqlite_url, "cancel", first, "--reason", "typo in the data")
    bulk = stride(sqlite_url, "cancel", "--job", "three-steps", "--since", "10m")
    replayed = stride(sqlite_url, "replay", first)

    assert one.returncode == 0 and one.stdout == f"{first}\n", one.stderr
    assert bulk.returncode == 0 and sorted(bulk.stdout.split()) == others, bulk.stderr
    assert "cancelled 2 unfinished runs of job 'three-steps'" in bulk.stderr
    assert replayed.returncode == 0, replayed.stderr
    runs = {run.id: run for run in _runs(sqlite_url)}
    assert runs[first].error == {**(runs[first].error or {}), "message": "typo in the data",
                                 "by": "cli"}
    new = runs[replayed.stdout.strip()]
    assert (new.status, new.event_id) == ("queued", runs[first].event_id)
    assert stride(sqlite_url, "cancel", first).stderr.startswith(
        f"stride: run {first} had already finished")
    assert_one_line_error(stride(sqlite_url, "cancel"), "give a run id, or --job")
    assert_one_line_error(stride(sqlite_url, "replay", "no-such-run"), "no-such-run")


def _runs(database_url: str) -> list[Run]:
    async def runs() -> list[Run]:
        app = Stride("observer", database_url=database_url)
        try:
            return [await app.get_run(run.id) for run in await app.get_runs(limit=100)]
        finally:
            await app.aclose()

    return asyncio.run(runs())


def test_audit_lists_rls_bypasses_newest_first_and_filters_by_run_and_tag(
        sqlite_url: str) -> None:
    async def record() -> None:
        store = open_store_for_url(sqlite_url)
        await store.open()
        await store.record_audit([
            AuditRecord(id=f"audit-{n}", tag=tag, app_id="cli-app", job_id="process-message",
                        run_id=run, step_id="record-delivery", attempt=1,
                        actor_json='{"id":"ada"}', started_at=1_000 + n, ended_at=1_005 + n,
                        outcome="ok")
            for n, (tag, run) in enumerate([("jobs:process-message", "run-a"),
                                            ("jobs:nightly", "run-b")])])
        await store.close()

    asyncio.run(record())

    everything = stride(sqlite_url, "audit")
    only_run_a = stride(sqlite_url, "audit", "--run", "run-a")
    by_tag = stride(sqlite_url, "audit", "--tag", "jobs:nightly")
    nothing = stride(sqlite_url, "audit", "--run", "run-z")

    assert everything.returncode == 0, everything.stderr
    assert [row[2] for row in table_rows(everything.stdout)] == ["jobs:nightly",
                                                                 "jobs:process-message"]
    assert [row[2] for row in table_rows(only_run_a.stdout)] == ["jobs:process-message"]
    assert "run-b" in by_tag.stdout and "run-a" not in by_tag.stdout
    assert "no RLS bypass matches" in nothing.stdout


def test_runs_filters_by_job_status_and_age(sqlite_url: str) -> None:
    asyncio.run(dispatch(sqlite_url, "test/three-steps", times=3))

    assert len(table_rows(stride(sqlite_url, "runs", "--limit", "2").stdout)) == 2
    both = stride(sqlite_url, "runs", "--job", "three-steps", "--status", "queued",
                  "--since", "10m")
    assert len(table_rows(both.stdout)) == 3
    assert "no runs match" in stride(sqlite_url, "runs", "--status", "failed").stdout
    time.sleep(1.1)
    assert "no runs match" in stride(sqlite_url, "runs", "--since", "1s").stdout


# -- dev --------------------------------------------------------------------------------


def test_dev_demo_runs_the_example_and_reports_runs_as_lines(sqlite_url: str,
                                                            tmp_path: Path) -> None:
    result = stride(sqlite_url, "dev", EXAMPLE, "--no-http", "--demo", "--no-live", "--for", "8",
                    "--log-format", "json", STRIDE_EXAMPLE_OUTPUT=str(tmp_path / "out"))

    assert result.returncode == 0, result.stderr
    assert re.search(r"run \S+ process-context-file +completed", result.stdout)
    assert re.search(r"process-context-file +failed .*corrupt.bin is not UTF-8", result.stdout)
    completed = re.search(r"completed (\d+)", result.stdout.splitlines()[-1])
    assert completed and int(completed.group(1)) >= 3, result.stdout
    assert list((tmp_path / "out" / "contexts").glob("*/*.summary.json"))
    logged = [json.loads(line) for line in result.stderr.splitlines()]
    summarised = [e for e in logged if e["message"].startswith("summarised")]
    assert summarised, result.stderr
    assert {"app_id", "job_id", "run_id", "step_id", "attempt", "path"} <= set(summarised[0])
    assert summarised[0]["job_id"] == "process-context-file"


def test_dev_live_view_draws_the_runs_table(sqlite_url: str, tmp_path: Path) -> None:
    stride(sqlite_url, "send", "test/three-steps", "--app", APP)

    result = stride(sqlite_url, "dev", APP, "--no-http", "--for", "2")

    assert result.returncode == 0, result.stderr
    assert "stride dev" in result.stdout
    assert any(row[1:3] == ["three-steps", "completed"] for row in table_rows(result.stdout))
    assert "completed 1" in result.stdout.splitlines()[-1]


def test_dev_stops_cleanly_on_ctrl_c(sqlite_url: str) -> None:
    dev = subprocess.Popen([sys.executable, "-m", "stride", "dev", APP, "--no-http", "--no-live"],
                           cwd=ROOT,
                           env=command_env(sqlite_url), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert dev.stderr is not None
    started = dev.stderr.readline()  # the worker's first log line
    assert "started" in started, started

    dev.send_signal(signal.SIGINT)
    stdout, stderr = dev.communicate(timeout=30)

    assert dev.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "stopped" in stderr
    assert "stride dev ran" in stdout


def test_dev_demo_needs_a_demo_coroutine_in_the_app_module(sqlite_url: str) -> None:
    result = stride(sqlite_url, "dev", APP, "--no-http", "--demo", "--for", "1")

    assert_one_line_error(result, "--demo needs", "async def demo(jobs: Stride)",
                          "tests.integration.apps_cli.flaky_steps")


# -- errors: one line, exit status 2, no traceback --------------------------------------


@pytest.mark.parametrize(("args", "fragments"), [
    (["worker", "nope.module:jobs"], ["cannot import 'nope.module'"]),
    (["worker", "no-colon"], ["must look like 'package.module:attribute'"]),
    (["runs", "--app", "examples.porygon.app:missing"], ["has no attribute 'missing'"]),
    (["dev", "examples.porygon.documents:DOCUMENTS_DIR"], ["not a Stride app"]),
    (["runs", "--database-url", "mysql://u@db/app"], ["'mysql://u@db/app' is not supported"]),
    (["send", "a/b", "--database-url", "postgresql://127.0.0.1:1/x"], ["127.0.0.1:1"]),
    (["runs", "--database-url", "sqlite:///no/such/stride.db"], ["no Stride database at"]),
    (["send", "a/b", "--data", "{oops"], ["--data '{oops' is not valid JSON"]),
    (["send", "a/b", "--data", "[1, 2]"], ["data must be a JSON object"]),
    (["send", "bad name!"], ["event name 'bad name!'"]),
    (["runs", "--since", "ten minutes"], ["--since 'ten minutes' is not a duration"]),
])
def test_bad_input_is_one_line_and_exit_status_2(sqlite_url: str, args: list[str],
                                                 fragments: list[str]) -> None:
    assert_one_line_error(stride(sqlite_url, *args), *fragments)


def test_unknown_run_id_is_one_line(sqlite_url: str) -> None:
    assert stride(sqlite_url, "migrate").returncode == 0

    assert_one_line_error(stride(sqlite_url, "run", "01NOSUCHRUN"), "no run with id '01NOSUCHRUN'")


@pytest.mark.parametrize("args", [["runs"], ["send", "a/b"], ["worker", APP]])
def test_a_corrupt_database_file_is_one_line(tmp_path: Path, args: list[str]) -> None:
    corrupt = tmp_path / "x.db"
    corrupt.write_text("garbage\n")

    result = stride(f"sqlite:///{corrupt}", *args)

    assert_one_line_error(result, f"{corrupt} is not a readable Stride SQLite database")


@pytest.fixture
def locked_database(sqlite_url: str) -> Iterator[str]:
    """A Stride database that another process holds with BEGIN EXCLUSIVE."""
    assert stride(sqlite_url, "migrate").returncode == 0
    path = sqlite_url.removeprefix("sqlite:///")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    yield sqlite_url
    holder.kill()
    holder.wait()


@pytest.mark.parametrize("args", [["runs"], ["migrate"]])
def test_a_locked_database_is_one_line(locked_database: str, args: list[str]) -> None:
    result = stride(locked_database, *args, "--busy-timeout", "0.3")

    assert_one_line_error(result, "stayed locked by another process")
