"""`process-context-file`: fetch an uploaded file, parse it, summarise it, store the summary.

Two kinds of failure are on show. A broken upload (empty, not UTF-8, unknown id) can never
succeed, so it raises `NonRetriableError` and the run fails at once with a message naming
the file. A flaky file store is transient: `fetch-file` fails on the first attempt of about
one run in three (chosen from the run id, not at random, so a run behaves the same on every
machine) and the retry succeeds a second later.
"""

import hashlib
from typing import Any

from pydantic import BaseModel

from examples.porygon.documents import (
    FileRecord,
    ParsedDocument,
    Summary,
    get_file_by_id,
    parse_document,
    store_summary,
    summarise,
)
from examples.porygon.jobs_common import Slug, context_dir
from stride import Context, NonRetriableError

FLAKY_ONE_IN = 3
"""About one run in this many meets a storage timeout on its first fetch."""


class FileUploaded(BaseModel):
    """A user uploaded a file into a context (`context/file.uploaded`)."""

    file_id: Slug
    context_id: Slug
    uploaded_by_id: str


class StorageTimeout(ConnectionError):
    """The (simulated) file store did not answer in time; a retry usually works."""


def storage_is_flaky(run_id: str, attempt: int) -> bool:
    """Whether the simulated store times out for this run's attempt (only ever the first)."""
    return attempt == 0 and hashlib.sha256(run_id.encode()).digest()[0] % FLAKY_ONE_IN == 0


def fetch_file(file_id: str, run_id: str, attempt: int) -> FileRecord:
    """Look the file up in the store; an unknown id is final, a timeout is worth a retry."""
    if storage_is_flaky(run_id, attempt):
        raise StorageTimeout(f"file store timed out fetching {file_id!r} (simulated flaky storage)")
    try:
        return get_file_by_id(file_id)
    except FileNotFoundError as exc:
        raise NonRetriableError(str(exc)) from exc


def parse_strictly(record: FileRecord) -> ParsedDocument:
    """Parse the file; an empty or undecodable upload fails the run now instead of 4 times."""
    try:
        return parse_document(record)
    except ValueError as exc:
        raise NonRetriableError(str(exc)) from exc


def store_result(summary: Summary, context_id: str) -> str:
    """Write the summary where the context's readers (and the AI job) find it."""
    return str(store_summary(summary, context_dir(context_id)))


async def process_context_file(ctx: Context[FileUploaded]) -> dict[str, Any]:
    """Turn an upload into a stored summary, one checkpointed step at a time."""
    upload = ctx.event.data
    record = await ctx.step.run("fetch-file", fetch_file, upload.file_id, ctx.run_id,
                                ctx.attempt)
    document = await ctx.step.run("parse-document", parse_strictly, record)
    summary = await ctx.step.run("summarise", summarise, document)
    path = await ctx.step.run("store-result", store_result, summary, upload.context_id)
    ctx.logger.info("summarised %s (%d words)", record.filename, document.word_count,
                    extra={"path": path})
    return {"success": True, "fileId": upload.file_id, "summary": summary.summary}
