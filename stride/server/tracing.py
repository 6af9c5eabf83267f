"""OpenTelemetry traces of runs (optional: `pip install stride[otel]`).

One span per finished run, with one child span per step and per step attempt, made after
the fact from what the store recorded (explicit start and end times), so the executor needs
no tracing code in its hot path: one call when a run finishes.

Example (the worker calls this once a run completed or failed):
    tracer = RunTracer.create()          # None when opentelemetry is not installed
    if tracer is not None:
        tracer.record(await app.get_run(run_id))
"""

from __future__ import annotations

from typing import Any

from stride.runs import Run, StepInfo

TRACER_NAME = "stride"
_MS = 1_000_000  # nanoseconds per millisecond


def available() -> bool:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


class RunTracer:
    """Turns finished runs into spans on an OpenTelemetry tracer."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    @classmethod
    def create(cls, tracer_provider: Any = None) -> RunTracer | None:
        """A tracer from the global (or given) provider; None without opentelemetry."""
        if not available():
            return None
        from opentelemetry import trace

        return cls(trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider))

    def record(self, run: Run) -> None:
        """Emit the run's span tree (nothing for a run that never started)."""
        from opentelemetry import trace

        start = run.started_at or run.created_at
        span = self._tracer.start_span(
            f"stride.run {run.job_id}", start_time=start * _MS, kind=trace.SpanKind.CONSUMER,
            attributes={"stride.run_id": run.id, "stride.job_id": run.job_id,
                        "stride.event_id": run.event_id, "stride.status": run.status,
                        "stride.queue_lag_ms": start - run.created_at})
        _set_status(span, run.status == "failed", run.error)
        context = trace.set_span_in_context(span)
        for step in run.steps:
            self._step(step, context, start)
        span.end(end_time=(run.ended_at or start) * _MS)

    def _step(self, step: StepInfo, context: Any, fallback: int) -> None:
        from opentelemetry import trace

        begin = step.started_at or fallback
        span = self._tracer.start_span(
            f"stride.step {step.id}", context=context, start_time=begin * _MS,
            attributes={"stride.step_id": step.id, "stride.step_kind": step.kind,
                        "stride.status": step.status, "stride.attempts": step.attempts})
        _set_status(span, step.status == "failed", step.error)
        inner = trace.set_span_in_context(span)
        for error in step.errors:
            attempt = self._tracer.start_span(
                f"stride.attempt {step.id}#{error.get('attempt')}", context=inner,
                start_time=(error.get("started_at") or begin) * _MS,
                attributes={"stride.attempt": error.get("attempt") or 0})
            _set_status(attempt, True, error)
            attempt.end(end_time=(error.get("ended_at") or begin) * _MS)
        span.end(end_time=(step.ended_at or begin) * _MS)


def _set_status(span: Any, failed: bool, error: dict[str, Any] | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    if not failed:
        span.set_status(Status(StatusCode.OK))
        return
    description = f"{(error or {}).get('name', 'Error')}: {(error or {}).get('message', '')}"
    span.set_status(Status(StatusCode.ERROR, description[:500]))
    if error:
        span.add_event("exception", attributes={
            "exception.type": str(error.get("name", "")),
            "exception.message": str(error.get("message", "")),
            "exception.stacktrace": str(error.get("traceback") or "")})
