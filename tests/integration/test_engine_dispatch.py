"""Bad input is refused with a clear error, and a refused dispatch stores nothing.

Each dispatch test first stores one good event (so the store exists and is not empty),
then makes a bad call and checks both what the error says and that the store is exactly
as before: same runs through the API, same row counts read straight from the database.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import BaseModel

from stride import (
    ConfigurationError,
    Context,
    DuplicateJobError,
    EventType,
    InvalidEventError,
    Stride,
    StrideError,
)

PAYLOAD_LIMIT = 256


class FileUploaded(BaseModel):
    file_id: str
    size: int


class Owner(BaseModel):
    email: str


class FileShared(BaseModel):
    file_id: str
    owner: Owner
    tags: list[str] = []


@pytest.fixture
def url(database_url: str) -> str:
    """Each backend's URL; PostgreSQL only once its store exists."""
    if database_url.startswith("postgres"):
        pytest.importorskip("stride.stores.postgres",
                            reason="the PostgreSQL store is not written yet")
    return database_url


def define_jobs(app: Stride) -> EventType[FileUploaded]:
    file_uploaded = app.event("context/file.uploaded", FileUploaded)
    app.event("context/file.shared", FileShared)

    @app.define_job(id="process-file", trigger=file_uploaded)
    async def process_file(ctx: Context[FileUploaded]) -> None: ...

    @app.define_job(id="welcome", trigger="user/signed-up")
    async def welcome(ctx: Context[dict[str, Any]]) -> None: ...

    @app.define_job(id="audit", trigger="user/signed-up")
    async def audit(ctx: Context[dict[str, Any]]) -> None: ...

    return file_uploaded


@pytest.fixture
async def app(url: str) -> AsyncIterator[Stride]:
    app = Stride(app_id="dispatch-tests", database_url=url, max_payload_bytes=PAYLOAD_LIMIT)
    define_jobs(app)
    yield app
    await app.aclose()


def row_counts(url: str) -> dict[str, int]:
    """Rows per table, read with the database's own driver (not through Stride)."""
    tables = ("events", "runs", "steps")
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    import psycopg

    parts = urlsplit(url)
    schema = parse_qs(parts.query)["schema"][0]
    with psycopg.connect(parts._replace(query="").geturl()) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in tables}


async def snapshot(app: Stride) -> tuple[list[str], dict[str, int]]:
    runs = await app.get_runs(limit=1000)
    return [run.id for run in runs], row_counts(app.database_url)


@pytest.fixture
async def before(app: Stride) -> tuple[list[str], dict[str, int]]:
    """The store after one accepted event: one event, the two runs it triggered."""
    await app.dispatch("user/signed-up", {"user_id": "u1"})
    state = await snapshot(app)
    assert state[1] == {"events": 1, "runs": 2, "steps": 0}
    return state


# --- dispatch: what is refused, and that nothing was stored ---------------------------------

BAD_DISPATCHES = [
    pytest.param("", {}, {}, "event name must be a non-empty string, got ''",
                 id="empty-name"),
    pytest.param("a" * 257, {}, {}, "is 257 characters; the limit is 256",
                 id="name-too-long"),
    pytest.param("user signed up", {}, {}, "event name 'user signed up' has a character outside",
                 id="name-with-spaces"),
    pytest.param("user/signed-up?", {}, {}, "has a character outside letters, digits",
                 id="name-with-question-mark"),
    pytest.param("/user/signed-up", {}, {}, "must start with a letter or digit",
                 id="name-with-leading-slash"),
    pytest.param("user/signed-up", ["u1"], {},
                 "event 'user/signed-up': data must be a JSON object (dict), got list",
                 id="data-is-a-list"),
    pytest.param("user/signed-up", "u1", {},
                 "data must be a JSON object (dict), got str", id="data-is-a-string"),
    pytest.param("context/file.uploaded", {"size": 10}, {},
                 "event 'context/file.uploaded' failed its schema: data.file_id: Field required",
                 id="schema-missing-field"),
    pytest.param("context/file.uploaded", {"file_id": "f1", "size": "big"}, {},
                 "event 'context/file.uploaded' failed its schema: data.size: Input should be "
                 "a valid integer", id="schema-wrong-type"),
    pytest.param("context/file.shared", {"file_id": "f1", "owner": {}}, {},
                 "failed its schema: data.owner.email: Field required", id="schema-nested-field"),
    pytest.param("context/file.shared",
                 {"file_id": "f1", "owner": {"email": "a@b"}, "tags": ["ok", 3]}, {},
                 "failed its schema: data.tags.1: Input should be a valid string",
                 id="schema-list-item"),
    pytest.param("context/file.uploaded", [1], {},
                 "event 'context/file.uploaded': data must be a FileUploaded or a JSON object",
                 id="typed-data-not-an-object"),
    pytest.param("user/signed-up", {"bio": "x" * PAYLOAD_LIMIT}, {},
                 f"the limit is {PAYLOAD_LIMIT} bytes", id="payload-too-large"),
    pytest.param("user/signed-up", {"u": 1}, {"user": {"note": "x" * PAYLOAD_LIMIT}},
                 f"the limit is {PAYLOAD_LIMIT} bytes", id="payload-with-user-too-large"),
    pytest.param("user/signed-up", {"socket": object()}, {},
                 "event 'user/signed-up': value is not JSON-serialisable", id="data-not-json"),
    pytest.param("user/signed-up", {"u": 1}, {"user": {"session": object()}},
                 "is not JSON-serialisable", id="user-not-json"),
    pytest.param("user/signed-up", {}, {"id": ""}, "event id must be a string of 1-128",
                 id="empty-event-id"),
    pytest.param("user/signed-up", {}, {"id": "e" * 129}, "event id must be a string of 1-128",
                 id="event-id-too-long"),
]


@pytest.mark.parametrize(("name", "data", "options", "message"), BAD_DISPATCHES)
async def test_a_bad_dispatch_is_refused_and_stores_nothing(
        app: Stride, before: tuple[list[str], dict[str, int]], name: str, data: Any,
        options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEventError, match=re.escape(message)) as raised:
        await app.dispatch(name, data, **options)

    assert "\n" not in str(raised.value), "one line"
    assert await snapshot(app) == before


async def test_the_serialisation_error_reads_cleanly(app: Stride) -> None:
    expected = "not JSON-serialisable: found a value of type 'object';"
    with pytest.raises(InvalidEventError, match=re.escape(expected)):
        await app.dispatch("user/signed-up", {"socket": object()})


async def test_a_user_that_is_not_an_object_is_refused_clearly(
        app: Stride, before: tuple[list[str], dict[str, int]]) -> None:
    with pytest.raises(InvalidEventError, match="user"):
        await app.dispatch("user/signed-up", {"u": 1}, user="alice")  # type: ignore[arg-type]

    assert await snapshot(app) == before


async def test_strict_mode_refuses_events_nobody_defined(url: str) -> None:
    app = Stride(app_id="strict", database_url=url, strict=True)
    file_uploaded = define_jobs(app)
    try:
        await app.dispatch(file_uploaded, FileUploaded(file_id="f1", size=3))
        before = await snapshot(app)

        with pytest.raises(InvalidEventError, match=re.escape(
                "event 'user/typo' is not defined and the app is strict")):
            await app.dispatch("user/typo", {"u": 1})

        assert await snapshot(app) == before
    finally:
        await app.aclose()


async def test_a_typed_event_stores_the_validated_json_form(app: Stride) -> None:
    [event_id] = await app.dispatch("context/file.uploaded", {"file_id": "f1", "size": "12"})

    event = await (await app.store()).get_event(event_id)
    assert event is not None
    assert event.data_json.replace(" ", "") == '{"file_id":"f1","size":12}'


async def test_dispatch_sync_refuses_bad_input_the_same_way(
        app: Stride, before: tuple[list[str], dict[str, int]]) -> None:
    with pytest.raises(InvalidEventError, match="has a character outside"):
        app.dispatch_sync("user signed up", {})

    assert await snapshot(app) == before


# --- duplicates ---------------------------------------------------------------------------------


async def test_an_event_id_seen_before_starts_no_new_runs(
        app: Stride, before: tuple[list[str], dict[str, int]]) -> None:
    first = await app.dispatch("user/signed-up", {"user_id": "u2"}, id="signup-u2")
    runs_of_first = await app.get_runs(event_id="signup-u2")

    again = await app.dispatch("user/signed-up", {"user_id": "CHANGED"}, id="signup-u2")

    assert first == again == ["signup-u2"]
    assert await app.get_runs(event_id="signup-u2") == runs_of_first
    assert len(runs_of_first) == 2
    assert row_counts(app.database_url) == {"events": 2, "runs": 4, "steps": 0}
    event = await (await app.store()).get_event("signup-u2")
    assert event is not None and "u2" in event.data_json, "the first event is kept as it was"


# --- dispatch_many ----------------------------------------------------------------------------


async def test_dispatch_many_stores_every_event_and_its_runs(app: Stride) -> None:
    ids = await app.dispatch_many([
        ("user/signed-up", {"user_id": "u1"}),
        {"name": "context/file.uploaded", "data": {"file_id": "f1", "size": 1}, "id": "up-f1"},
        EventType("context/file.uploaded", FileUploaded).create(
            FileUploaded(file_id="f2", size=2), user={"id": "admin"}),
    ])

    assert len(ids) == 3 and ids[1] == "up-f1"
    assert [len(await app.get_runs(event_id=event_id)) for event_id in ids] == [2, 1, 1]
    assert row_counts(app.database_url)["events"] == 3


async def test_dispatch_many_is_all_or_nothing(
        app: Stride, before: tuple[list[str], dict[str, int]]) -> None:
    with pytest.raises(InvalidEventError, match=re.escape("data.size")):
        await app.dispatch_many([
            ("user/signed-up", {"user_id": "u2"}),
            ("context/file.uploaded", {"file_id": "f1", "size": 1}),
            ("context/file.uploaded", {"file_id": "f2", "size": "huge"}),
        ])

    assert await snapshot(app) == before


async def test_dispatch_many_refuses_what_is_not_an_event(
        app: Stride, before: tuple[list[str], dict[str, int]]) -> None:
    with pytest.raises(InvalidEventError, match="cannot dispatch 42"):
        await app.dispatch_many([("user/signed-up", {}), 42])  # type: ignore[list-item]

    assert await snapshot(app) == before


async def test_dispatch_many_keeps_one_event_of_a_repeated_id(
        app: Stride, before: tuple[list[str], dict[str, int]]) -> None:
    ids = await app.dispatch_many([
        {"name": "user/signed-up", "data": {"user_id": "u9"}, "id": "signup-u9"},
        {"name": "user/signed-up", "data": {"user_id": "u9"}, "id": "signup-u9"},
    ])

    assert ids == ["signup-u9", "signup-u9"]
    assert len(await app.get_runs(event_id="signup-u9")) == 2


# --- job definitions: refused when defined, not when first run --------------------------------


async def handler(ctx: Context[dict[str, Any]]) -> None: ...


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"retries": -1}, "job 'j': retries must be 0..100, got -1", id="retries-negative"),
    pytest.param({"retries": 101}, "retries must be 0..100, got 101", id="retries-too-many"),
    pytest.param({"retries": "3"}, "retries must be 0..100, got '3'", id="retries-not-int"),
    pytest.param({"concurrency": 0}, "job 'j': concurrency must be a positive int or None, "
                                     "got 0", id="concurrency-zero"),
    pytest.param({"concurrency": -4}, "concurrency must be a positive int", id="concurrency-neg"),
    pytest.param({"concurrency": 2.5}, "concurrency must be a positive int",
                 id="concurrency-float"),
    pytest.param({"trigger": []}, "job 'j' has no trigger", id="no-trigger"),
    pytest.param({"trigger": [7]}, "job 'j': 7 is not a trigger", id="trigger-not-an-event"),
])
def test_bad_job_options_are_refused_at_definition(options: dict[str, Any], message: str) -> None:
    app = Stride(app_id="defs", database_url="sqlite:///unused.db")
    kwargs: dict[str, Any] = {"id": "j", "trigger": "user/signed-up", **options}

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        app.define_job(**kwargs)(handler)

    assert app.jobs == {}


@pytest.mark.parametrize("job_id", ["", "Process-File", "process file", "-process", "p" * 129,
                                    "process/file", 42])
def test_a_job_id_must_be_a_slug(job_id: Any) -> None:
    app = Stride(app_id="defs", database_url="sqlite:///unused.db")

    with pytest.raises(ConfigurationError, match="must be a slug"):
        app.define_job(id=job_id, trigger="user/signed-up")(handler)


def test_a_trigger_that_is_not_an_event_or_a_list_is_refused_clearly() -> None:
    app = Stride(app_id="defs", database_url="sqlite:///unused.db")

    with pytest.raises(ConfigurationError, match="7 is not a trigger"):
        app.define_job(id="j", trigger=7)(handler)  # type: ignore[call-overload]


def test_a_job_trigger_with_a_bad_event_name_is_refused_at_definition() -> None:
    app = Stride(app_id="defs", database_url="sqlite:///unused.db")

    with pytest.raises(StrideError, match="event name 'user signed up' has a character outside"):
        app.define_job(id="j", trigger="user signed up")(handler)
    assert app.jobs == {}


def test_two_jobs_with_one_id_are_refused() -> None:
    app = Stride(app_id="defs", database_url="sqlite:///unused.db")
    app.define_job(id="welcome", trigger="user/signed-up")(handler)

    with pytest.raises(DuplicateJobError, match=re.escape(
            "job id 'welcome' is defined twice in app 'defs'")):
        app.define_job(id="welcome", trigger="user/invited")(handler)

    assert list(app.jobs) == ["welcome"]
    assert app.jobs["welcome"].triggers[0].event == "user/signed-up"


def test_one_event_name_cannot_be_bound_to_two_models() -> None:
    app = Stride(app_id="defs", database_url="sqlite:///unused.db")
    app.event("context/file.uploaded", FileUploaded)

    with pytest.raises(ConfigurationError, match="already defined with FileUploaded"):
        app.event("context/file.uploaded", FileShared)


@pytest.mark.parametrize(("options", "message"), [
    pytest.param({"app_id": ""}, "app_id must be a non-empty string", id="empty-app-id"),
    pytest.param({"database_url": "mysql://x/y"}, "is not supported", id="unknown-database"),
    pytest.param({"max_payload_bytes": 0}, "max_payload_bytes must be >= 1", id="no-payload"),
    pytest.param({"dedupe_window": "soon"}, "dedupe_window 'soon' is not a duration",
                 id="bad-window"),
])
def test_bad_app_options_are_refused_at_construction(options: dict[str, Any],
                                                     message: str) -> None:
    kwargs: dict[str, Any] = {"app_id": "a", "database_url": "sqlite:///unused.db", **options}

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Stride(**kwargs)
