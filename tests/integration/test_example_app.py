"""The Porygon example app, run by an in-process worker on real documents.

What it promises: every real document ends up summarised on disk; broken uploads fail at
their parse step at once, naming the file; a flaky file store costs a retry, not a run;
answers quote the summaries that match the question; messages are delivered once.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from examples.porygon.app import create_app
from examples.porygon.demo import events
from examples.porygon.documents import get_file_by_id, list_file_ids, parse_document, summarise
from examples.porygon.jobs_ai import gather_context
from examples.porygon.jobs_files import storage_is_flaky
from examples.porygon.jobs_messaging import RenderedMessage, deliver
from stride import RetryAfterError, Run, Stride
from stride._current import RunScope, StepScope, current_run, current_step

BROKEN = {"empty": "empty.txt is empty", "corrupt": "corrupt.bin is not UTF-8"}
REAL = [file_id for file_id in list_file_ids() if file_id not in BROKEN]


@pytest.fixture
def output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STRIDE_EXAMPLE_OUTPUT", str(tmp_path / "out"))
    return tmp_path / "out"


@pytest.fixture
async def jobs(sqlite_url: str, output: Path) -> AsyncIterator[Stride]:
    app = create_app(database_url=sqlite_url)
    async with app.worker(concurrency=10):
        yield app
    await app.aclose()


async def run_of(jobs: Stride, name: str, data: dict[str, str]) -> Run:
    """Dispatch one event and wait for the one run it triggers to finish."""
    [event_id] = await jobs.dispatch(name, data, user={"id": data.get("uploaded_by_id")})
    [run] = await jobs.get_runs(event_id=event_id)
    return await jobs.wait_for(run.id, timeout=30)


async def upload(jobs: Stride, file_id: str, context_id: str = "ctx-test") -> Run:
    return await run_of(jobs, "context/file.uploaded",
                        {"file_id": file_id, "context_id": context_id, "uploaded_by_id": "u1"})


async def test_real_documents_are_summarised_and_stored(jobs: Stride, output: Path) -> None:
    for file_id in REAL:
        run = await upload(jobs, file_id)

        expected = summarise(parse_document(get_file_by_id(file_id)))
        assert run.status == "completed", run.error
        assert run.output == {"success": True, "fileId": file_id, "summary": expected.summary}
        assert [s.id for s in run.steps] == ["fetch-file", "parse-document", "summarise",
                                             "store-result"]
        stored = json.loads((output / "contexts" / "ctx-test" / f"{file_id}.summary.json")
                            .read_text())
        assert stored["summary"] == expected.summary


@pytest.mark.parametrize("file_id", sorted(BROKEN))
async def test_broken_uploads_fail_at_parse_without_retrying(jobs: Stride, file_id: str) -> None:
    run = await upload(jobs, file_id)

    assert run.status == "failed"
    parse = run.step("parse-document")
    assert parse.status == "failed"
    assert parse.attempts == 1  # NonRetriableError: retrying could never help
    assert parse.error is not None and parse.error["name"] == "NonRetriableError"
    assert BROKEN[file_id] in parse.error["message"]
    assert run.error is not None and BROKEN[file_id] in run.error["message"]


async def test_flaky_storage_costs_one_retry_of_fetch_file(jobs: Stride) -> None:
    # about one run in three is flaky (by its id): upload until both kinds were seen
    runs = []
    for file_id in itertools.islice(itertools.cycle(REAL), 40):
        runs.append(await upload(jobs, file_id))
        if len(runs) >= 6 and len({storage_is_flaky(run.id, 0) for run in runs}) == 2:
            break

    for run in runs:
        fetch = run.step("fetch-file")
        flaky = storage_is_flaky(run.id, 0)
        assert run.status == "completed"
        assert fetch.attempts == (2 if flaky else 1)
        assert [e["name"] for e in fetch.errors] == (["StorageTimeout"] if flaky else [])
    assert any(storage_is_flaky(run.id, 0) for run in runs)


async def test_answers_quote_the_summaries_that_match_the_question(jobs: Stride,
                                                                   output: Path) -> None:
    for file_id in ("incident-postmortem", "pricing-proposal", "onboarding-guide"):
        assert (await upload(jobs, file_id, "ctx-mixed")).status == "completed"

    run = await run_of(jobs, "ai/generation.requested", {
        "prompt": "What was the root cause of the indexing backlog incident?",
        "context_id": "ctx-mixed", "requested_by_id": "u1"})

    assert run.status == "completed", run.error
    assert run.output["sources"][0] == "incident-postmortem"
    assert "retry storm" in run.output["answer"]
    stored = json.loads(Path(run.output["path"]).read_text())
    assert stored["answer"] == run.output["answer"]
    assert stored["prompt"].startswith("What was the root cause")


def test_questions_about_an_empty_context_wait_for_its_uploads(output: Path) -> None:
    with pytest.raises(RetryAfterError, match="has no summaries yet") as raised:
        gather_context("ctx-nothing-here")
    assert raised.value.delay_seconds == 1.0


async def test_messages_are_delivered_to_the_outbox(jobs: Stride, output: Path) -> None:
    run = await run_of(jobs, "messaging/send.requested", {
        "message_id": "m-1", "channel": "email", "recipient": "ada", "body": "Your file is ready"})

    assert run.status == "completed", run.error
    assert run.output == {"messageId": "m-1", "channel": "email", "duplicate": False}
    [line] = (output / "outbox.jsonl").read_text().splitlines()
    delivered = json.loads(line)
    assert delivered["idempotency_key"] == f"{run.id}:deliver"
    assert delivered["text"] == "Hello ada,\n\nYour file is ready\n\n-- Porygon"


def test_delivering_twice_in_one_step_sends_once(output: Path) -> None:
    # a worker that died after delivering but before checkpointing runs the step again
    message = RenderedMessage(message_id="m-2", channel="sms", recipient="ada", text="hi")
    run_token = current_run.set(RunScope("porygon", "process-message", "RUN1", "EVT1", None))
    step_token = current_step.set(StepScope("deliver", 1))
    try:
        first, second = deliver(message), deliver(message)
    finally:
        current_step.reset(step_token)
        current_run.reset(run_token)

    assert (first.duplicate, second.duplicate) == (False, True)
    assert len((output / "outbox.jsonl").read_text().splitlines()) == 1


async def test_health_check_runs_as_a_sync_handler(jobs: Stride) -> None:
    run = await run_of(jobs, "system/health.check", {"source": "test"})

    assert run.status == "completed", run.error
    assert [s.id for s in run.steps] == ["ping-store", "report"]
    assert run.output["healthy"] is True
    assert run.output["pickup_ms"] >= 0 and run.output["checkpoint_ms"] >= 0


def test_the_demo_uploads_every_document_and_asks_only_about_filed_contexts() -> None:
    stream = list(itertools.islice(events(), 40))
    uploads = [data["file_id"] for name, data, _ in stream if name == "context/file.uploaded"]
    questions = [data for name, data, _ in stream if name == "ai/generation.requested"]

    assert set(uploads[:len(list_file_ids())]) == set(list_file_ids())
    assert questions and all(q["context_id"] != "ctx-inbox" for q in questions)
    assert {name for name, _, _ in stream} == {
        "context/file.uploaded", "ai/generation.requested", "messaging/send.requested",
        "system/health.check"}
    assert stream == list(itertools.islice(events(), 40))  # the same every time
