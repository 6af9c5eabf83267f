"""Flow-control keys are read off each dispatched event: the value of the key expression,
as a string, with the same answer whether it is a plain path (looked up directly) or any
other CEL expression (evaluated)."""

from __future__ import annotations

from typing import Any

import pytest

from stride import Concurrency, Stride
from stride._flow_keys import FlowKeys, key_reader
from stride.expressions import compile_expression


def event(data: Any) -> dict[str, Any]:
    return {"id": "e1", "name": "files/uploaded", "data": data, "user": None, "ts": 0}


@pytest.mark.parametrize(("data", "key"), [
    ({"user": "u1"}, "u1"),
    ({"user": 7}, "7"),
    ({"user": {"org": "o1"}}, '{"org":"o1"}'),
    ({"user": None}, "null"),
    ({}, ""),  # a missing field: the empty key, which such events share
    ({"user": "u1", "other": 1}, "u1"),
])
def test_a_plain_path_reads_the_value_as_a_key(data: dict[str, Any], key: str) -> None:
    assert key_reader(compile_expression("event.data.user", owner="test"))(event(data)) == key


def test_a_path_through_a_scalar_or_a_list_is_the_empty_key() -> None:
    read = key_reader(compile_expression("event.data.user.id", owner="test"))
    assert read(event({"user": "u1"})) == ""
    assert read(event({"user": ["u1"]})) == ""
    assert read(event({"user": {"id": "u1"}})) == "u1"


def test_other_expressions_are_evaluated_and_a_failure_is_the_empty_key() -> None:
    read = key_reader(compile_expression('event.data.org + "/" + event.data.user', owner="t"))
    assert read(event({"org": "o1", "user": "u1"})) == "o1/u1"
    assert read(event({"org": "o1"})) == ""


def test_plain_paths_and_evaluated_expressions_agree() -> None:
    plain = key_reader(compile_expression("event.data.n", owner="test"))
    evaluated = key_reader(compile_expression("(event.data.n)", owner="test"))
    for value in ("x", 3, True, [1, 2], {"a": 1}):
        assert plain(event({"n": value})) == evaluated(event({"n": value})), value


def test_each_limit_of_a_job_gets_its_own_key() -> None:
    app = Stride(app_id="shop")

    @app.define_job(id="sync", trigger="shop/order", concurrency=[
        Concurrency(limit=2, key="event.data.customer"),
        Concurrency(limit=10, key="event.data.region", scope="account", name="regions")])
    async def sync(ctx: Any) -> None: ...

    flow = FlowKeys(app.jobs["sync"], "shop").run_flow(
        event({"customer": "c1", "region": "eu"}))
    assert flow.concurrency == (("shop/sync#0:c1", 2), ("account/regions:eu", 10))
