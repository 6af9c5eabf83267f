"""Geometry for the dashboard's SVG: the run timeline and the small per-job charts.

Pure functions from numbers to numbers; the templates only place what these return, so
nothing here touches HTML and nothing there computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stride.server.models import RunDetail, StepAttempt

MIN_BAR_PERCENT = 0.6
CHART_W = 240
CHART_H = 48


@dataclass(frozen=True, slots=True)
class Bar:
    x: float  # percent of the timeline
    width: float
    kind: str  # queued, running, completed, failed, sleeping, cancelled
    title: str


@dataclass(frozen=True, slots=True)
class Lane:
    label: str
    anchor: str | None
    status: str
    attempts: int
    duration_ms: int | None
    bars: list[Bar] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Timeline:
    start: int
    span: int
    lanes: list[Lane]
    ticks: list[tuple[int, str]]


def human_ms(ms: float | None) -> str:
    """350 ms, 1.2 s, 3 m 05 s, 2 h 10 m."""
    if ms is None:
        return "\u2013"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


class _Scale:
    def __init__(self, start: int, span: int) -> None:
        self.start, self.span = start, span

    def bar(self, begin: int | None, end: int | None, kind: str, title: str) -> Bar | None:
        if begin is None:
            return None
        end = begin if end is None else max(begin, end)
        x = min(100.0, max(0.0, (begin - self.start) * 100 / self.span))
        width = max(MIN_BAR_PERCENT, (end - begin) * 100 / self.span)
        return Bar(round(x, 3), round(min(width, 100.0 - x) or MIN_BAR_PERCENT, 3), kind, title)


def _extent(run: RunDetail, now: int) -> tuple[int, int]:
    start = run.created_at
    ends = [run.ended_at or now]
    for step in run.steps:
        ends += [a.ended_at for a in step.history if a.ended_at is not None]
    return start, max(max(ends) - start, 1)


def _attempt_bar(scale: _Scale, attempt: StepAttempt) -> Bar | None:
    what = attempt.error.name + ": " + attempt.error.message if attempt.error else attempt.outcome
    title = f"attempt {attempt.attempt}: {what} ({human_ms(attempt.duration_ms)})"
    return scale.bar(attempt.started_at, attempt.ended_at, attempt.outcome, title)


def _run_lane(run: RunDetail, scale: _Scale, now: int) -> Lane:
    bars = [scale.bar(run.created_at, run.started_at or run.ended_at or now, "queued",
                      "waiting to start"),
            scale.bar(run.started_at, run.ended_at or now, run.status,
                      f"{run.status} ({human_ms(run.duration_ms)})")]
    return Lane("run", None, run.status, run.attempts, run.duration_ms,
                [bar for bar in bars if bar is not None])


def timeline(run: RunDetail, now: int) -> Timeline:
    """Lanes for the run, its handler-level attempts, and each step with every attempt."""
    start, span = _extent(run, now)
    scale = _Scale(start, span)
    lanes = [_run_lane(run, scale, now)]
    handler = [scale.bar(e.started_at, e.ended_at, "failed",
                         f"attempt {e.attempt}: {e.name}: {e.message}")
               for e in run.errors if e.started_at is not None]
    if handler:
        lanes.append(Lane("handler (outside steps)", "errors", "failed", len(handler), None,
                          [bar for bar in handler if bar is not None]))
    for step in run.steps:
        bars = [_attempt_bar(scale, attempt) for attempt in step.history]
        lanes.append(Lane(step.id, f"step-{step.position}", step.status, step.attempts,
                          step.duration_ms, [bar for bar in bars if bar is not None]))
    ticks = [(pct, "+" + human_ms(span * pct / 100)) for pct in (0, 25, 50, 75, 100)]
    return Timeline(start, span, lanes, ticks)


# -- the small charts of the jobs page ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    title: str


def bar_chart(values: Sequence[float], titles: Sequence[str]) -> list[Rect]:
    """One bar per value, scaled to the chart's height; zero values draw nothing."""
    top = max(values, default=0) or 1
    width = CHART_W / max(len(values), 1)
    rects = []
    for index, (value, title) in enumerate(zip(values, titles, strict=True)):
        if value > 0:
            height = max(1.0, value * (CHART_H - 2) / top)
            rects.append(Rect(round(index * width, 2), round(CHART_H - height, 2),
                              round(max(width - 1, 1), 2), round(height, 2), title))
    return rects


def polyline(values: Sequence[float | None], top: float) -> list[str]:
    """`points` strings of the line through the known values (a gap splits the line)."""
    step = CHART_W / max(len(values) - 1, 1)
    runs: list[list[tuple[float, float]]] = [[]]
    for index, value in enumerate(values):
        if value is None:
            runs.append([])
        else:
            runs[-1].append((index * step, CHART_H - 1 - value * (CHART_H - 2) / (top or 1)))
    lines = []
    for points in filter(None, runs):
        if len(points) == 1:  # a lone minute: a short dash, so that it shows
            (x, y), = points
            points = [(max(0.0, x - 2), y), (min(float(CHART_W), x + 2), y)]
        lines.append(" ".join(f"{x:.1f},{y:.1f}" for x, y in points))
    return lines
