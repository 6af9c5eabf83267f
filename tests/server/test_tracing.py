"""Runs become OpenTelemetry span trees (run > step > failed attempt), from stored times."""

from __future__ import annotations

import pytest

from tests.server.conftest import World

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="pip install stride[otel]")


async def test_a_failed_run_becomes_a_span_tree(world: World) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from stride.server.tracing import RunTracer

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = RunTracer.create(provider)
    assert tracer is not None

    run = await world.app.get_run(world.flaky_run)
    tracer.record(run)

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"stride.run flaky", "stride.step fetch", "stride.step explode",
                          "stride.attempt explode#1", "stride.attempt explode#2"}
    root = spans["stride.run flaky"]
    assert root.status.status_code.name == "ERROR"
    assert root.start_time == (run.started_at or 0) * 1_000_000
    assert root.end_time == (run.ended_at or 0) * 1_000_000
    step = spans["stride.step explode"]
    assert step.parent is not None and step.parent.span_id == root.context.span_id
    attempt = spans["stride.attempt explode#1"]
    assert attempt.parent is not None and attempt.parent.span_id == step.context.span_id
    assert attempt.events[0].attributes["exception.type"] == "ConnectionError"
    assert spans["stride.step fetch"].status.status_code.name == "OK"
