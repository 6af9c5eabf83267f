"""A trigger may carry a CEL filter: only matching events start runs of that job."""

from __future__ import annotations

from typing import Any

import pytest

from stride import ConfigurationError, Context, Stride, on_event


def make_app(url: str) -> Stride:
    jobs = Stride(app_id="filters", database_url=url)

    @jobs.define_job(id="scan-nonempty", trigger=on_event("context/file.uploaded",
                                                          if_="event.data.size > 0"))
    async def scan(ctx: Context[dict[str, Any]]) -> None:
        return None

    @jobs.define_job(id="log-every-upload", trigger="context/file.uploaded")
    async def log_upload(ctx: Context[dict[str, Any]]) -> None:
        return None

    return jobs


async def test_only_events_matching_the_filter_start_runs_of_that_job(sqlite_url: str) -> None:
    jobs = make_app(sqlite_url)
    [big] = await jobs.dispatch("context/file.uploaded", {"size": 10})
    [empty] = await jobs.dispatch("context/file.uploaded", {"size": 0})
    [no_size] = await jobs.dispatch("context/file.uploaded", {})
    assert {r.job_id for r in await jobs.get_runs(event_id=big)} == {
        "scan-nonempty", "log-every-upload"}
    assert {r.job_id for r in await jobs.get_runs(event_id=empty)} == {"log-every-upload"}
    assert {r.job_id for r in await jobs.get_runs(event_id=no_size)} == {"log-every-upload"}
    await jobs.aclose()


def test_a_bad_filter_fails_when_the_job_is_defined_naming_job_and_position() -> None:
    jobs = Stride(app_id="filters", database_url="sqlite:///unused.db")
    with pytest.raises(ConfigurationError) as info:
        jobs.define_job(id="broken", trigger=on_event("a/b", if_="event.data.size >"))(
            lambda ctx: None)
    message = str(info.value)
    assert "job 'broken'" in message and "event.data.size >" in message
    assert "column" in message
