"""Typed usage of the public API: `mypy --strict` must accept this file as it is.

`reveal_type` lines are checked by tests/unit/test_typing.py against mypy's output, so
this file proves what mypy infers for users, not only that it does not complain.
"""

from __future__ import annotations

from typing import Any, reveal_type

from pydantic import BaseModel

from stride import Context, JobConfig, Stride, SyncContext

jobs = Stride(app_id="typing-demo", database_url="sqlite:///unused.db")


class FileUploaded(BaseModel):
    file_id: str
    context_id: str
    uploaded_by_id: str


class Parsed(BaseModel):
    words: int


file_uploaded = jobs.event("context/file.uploaded", FileUploaded)


def get_file_by_id(file_id: str) -> bytes:
    return file_id.encode()


async def parse(content: bytes) -> Parsed:
    return Parsed(words=len(content.split()))


@jobs.define_job(id="process-context-file", retries=3, concurrency=5, trigger=file_uploaded)
async def process_context_file(ctx: Context[FileUploaded]) -> dict[str, Any]:
    reveal_type(ctx.event.data)  # expect: FileUploaded
    file = await ctx.step.run("fetch-file", get_file_by_id, ctx.event.data.file_id)
    reveal_type(file)  # expect: bytes
    parsed = await ctx.step.run("parse-document", parse, file)
    reveal_type(parsed)  # expect: Parsed
    return {"success": True, "words": parsed.words}


reveal_type(process_context_file)  # expect: Job[FileUploaded, dict[str, Any]]


@jobs.define_job(id="health", trigger="system/health.check")
def health(ctx: SyncContext[dict[str, Any]]) -> int:
    reveal_type(ctx.event.data)  # expect: dict[str, Any]
    took = ctx.step.run("ping", lambda: 3)
    reveal_type(took)  # expect: int
    return took


def summarise(ctx: Context[FileUploaded]) -> Any:
    return None


async def typed_call_form(ctx: Context[FileUploaded]) -> str:
    return ctx.event.data.context_id


call_form = jobs.define_job(JobConfig(id="call-form"), file_uploaded, typed_call_form)
reveal_type(call_form)  # expect: Job[FileUploaded, str]


async def send() -> None:
    ids = await jobs.dispatch(file_uploaded, FileUploaded(file_id="f", context_id="c",
                                                          uploaded_by_id="u"))
    reveal_type(ids)  # expect: list[str]
    await jobs.dispatch("context/file.uploaded", {"file_id": "f1"})
    jobs.dispatch_sync("system/health.check")
