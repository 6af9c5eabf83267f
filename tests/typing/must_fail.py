"""Mistakes `mypy --strict` must catch (tests/unit/test_typing.py expects each error)."""

from __future__ import annotations

from pydantic import BaseModel

from stride import Context, Stride

jobs = Stride(app_id="typing-fail", database_url="sqlite:///unused.db")


class FileUploaded(BaseModel):
    file_id: str


class UserDeleted(BaseModel):
    user_id: str


file_uploaded = jobs.event("context/file.uploaded", FileUploaded)


# a handler written for another event than its trigger
@jobs.define_job(id="wrong-event", trigger=file_uploaded)  # error: wrong-event
async def wrong_event(ctx: Context[UserDeleted]) -> None:
    return None


async def typo(ctx: Context[FileUploaded]) -> str:
    return ctx.event.data.fileid  # error: attr


def needs_int(value: int) -> int:
    return value


async def wrong_step_argument(ctx: Context[FileUploaded]) -> int:
    return await ctx.step.run("double", needs_int, "not an int")  # error: step-arg


async def wrong_dispatch() -> None:
    await jobs.dispatch(file_uploaded, UserDeleted(user_id="u"))  # error: dispatch-model
