"""Rich renderables for the CLI: run tables, one run in detail, the dev footer.

Everything that came from users (job ids, event data, error messages, tracebacks) goes in
as `Text`, never as a markup string, so a message like "[red]" or "[/]" prints as itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from stride import _codec
from stride._audit import AuditRecord
from stride._cli_watch import RunLine
from stride.runs import Run, StepInfo
from stride.stores.base import RUN_STATUSES, EventRow

STATUS_STYLES: Mapping[str, str] = {
    "queued": "blue", "running": "yellow", "sleeping": "cyan", "waiting": "magenta",
    "completed": "green", "failed": "bold red", "cancelled": "dim", "retrying": "dark_orange",
    "skipped": "dim italic",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def format_duration(ms: int | None) -> str:
    """`12 ms`, `1.25 s`, `3m 04s`: precise where short, readable where long."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms // 1000, 60)
    return f"{minutes}m {seconds:02d}s"


def format_time(ms: int | None, *, date: bool = True) -> str:
    """Local wall-clock time of an epoch-ms timestamp (`date=False`: the time only)."""
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(ms / 1000))


def format_when(ms: int, *, now_ms: int | None = None) -> str:
    """`23:17:48` today, `2024-05-01 23:17` before: short where the date goes without saying."""
    now = time.localtime((now_ms if now_ms is not None else time.time() * 1000) / 1000)
    then = time.localtime(ms / 1000)
    if then[:3] == now[:3]:
        return time.strftime("%H:%M:%S", then)
    return time.strftime("%Y-%m-%d %H:%M", then)


def step_text(line: RunLine) -> Text:
    """The run's current or last step; a retrying step shows in the retry colour."""
    if line.step_id is None:
        return Text("-", style="dim")
    text = Text(line.step_id)
    if line.step_status not in (None, "completed"):
        text.append(f" ({line.step_status})", style=STATUS_STYLES.get(line.step_status or "", ""))
    return text


def runs_table(lines: list[RunLine], *, live: bool = False) -> Table:
    """One row per run. `stride runs`: id, job, status, attempts, created, duration; the live
    view swaps the date for the event and adds the current step.

    Run ids never wrap or shorten (people copy them into `stride run ID`); the other text
    columns fold onto a second line before they would be cut off in a narrow terminal.
    """
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("run", no_wrap=True, min_width=26, style="bold")
    table.add_column("job", overflow="fold", min_width=10)
    table.add_column("status", no_wrap=True, min_width=9)
    if live:
        table.add_column("event", overflow="fold")
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    if live:
        table.add_column("step", overflow="fold")
    reasons = any(line.reason for line in lines)
    if reasons:  # flow control's decisions: skipped, delayed, debounced, cancelled
        table.add_column("reason", overflow="fold", style="dim")
    for line in lines:
        table.add_row(*_row(line, live=live), *([Text(line.reason or "")] if reasons else []))
    return table


def _row(line: RunLine, *, live: bool) -> list[Text]:
    cells = [Text(line.id), Text(line.job_id), status_text(line.status)]
    if live:
        cells.append(Text(line.event_name))
    cells += [Text(str(line.attempts)), Text(format_when(line.created_at)),
              Text(format_duration(line.duration_ms))]
    if live:
        cells.append(step_text(line))
    return cells


def counts_text(counts: Mapping[str, int], *, capped: bool, label: str) -> Text:
    """`label: 14 runs · completed 10 · failed 2 · running 2`, statuses in lifecycle order."""
    total = sum(counts.values())
    text = Text(f"{label}: {total}{'+' if capped else ''} runs", style="bold")
    for status in RUN_STATUSES:
        if counts.get(status):
            text.append("  ·  ")
            text.append(f"{status} {counts[status]}", style=STATUS_STYLES[status])
    return text


# -- one run in detail ---------------------------------------------------------


def run_detail(run: Run, event: EventRow | None, *, tracebacks: bool = False,
               audit: Sequence[AuditRecord] = ()) -> Group:
    """Everything `stride run ID` shows: header, event, outcome, steps and their errors."""
    parts: list[RenderableType] = [_header(run, event)]
    if run.status == "completed":
        parts += [Text("output", style="bold green"), _json(run.output)]
    if run.error:
        parts += [Text("error", style="bold red"), _error(run.error, traceback=True)]
    if run.errors and len(run.errors) > (1 if run.error else 0):
        parts += [Text("handler attempts", style="bold"), _attempt_errors(run.errors)]
    parts.append(steps_table(run.steps))
    if tracebacks:
        parts += _step_tracebacks(run.steps)
    if audit:
        parts += [Text("RLS bypasses", style="bold"), audit_table(audit, run_columns=False)]
    return Group(*parts)


def audit_table(records: Sequence[AuditRecord], *, run_columns: bool = True) -> Table:
    """RLS bypasses: when, how long, tag, outcome, where (job, run, step), for whom."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    columns = ["started", "ms", "tag", "outcome", *(["job", "run"] if run_columns else []),
               "step", "actor"]
    for column in columns:
        table.add_column(column, justify="right" if column == "ms" else "left")
    for rec in records:
        outcome = Text(rec.outcome, style="green" if rec.outcome == "ok" else "red")
        if rec.error:
            outcome.append(f" {rec.error}")
        where = [rec.job_id or "-", rec.run_id or "-"] if run_columns else []
        table.add_row(format_time(rec.started_at), str(rec.ended_at - rec.started_at), rec.tag,
                      outcome, *where, rec.step_id or "-", rec.actor_json or "-")
    return table


def _header(run: Run, event: EventRow | None) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    title = Text(f"{run.id}  ")
    title.append_text(status_text(run.status))
    grid.add_row(Text("run"), title)
    grid.add_row(Text("job"), Text(run.job_id))
    if run.reason:
        grid.add_row(Text("reason"), Text(run.reason))
    if event is not None:
        grid.add_row(Text("event"), Text(f"{event.name}  {event.id}  "
                                         f"at {format_time(event.ts)}"))
        grid.add_row(Text("data"), Text(event.data_json))
        if event.user_json:
            grid.add_row(Text("user"), Text(event.user_json))
    grid.add_row(Text("created"), Text(format_time(run.created_at)))
    grid.add_row(Text("started"), Text(format_time(run.started_at)))
    grid.add_row(Text("ended"), Text(format_time(run.ended_at)))
    grid.add_row(Text("duration"), Text(format_duration(run.duration_ms)))
    return grid


def _json(value: Any) -> RenderableType:
    try:
        rendered = JSON(_codec.dumps_str(value))
    except Exception:  # not JSON after all (should not happen for stored output): show as is
        return Text(repr(value))
    rendered.text.no_wrap = False  # long strings (summaries) wrap instead of being cut off
    rendered.text.overflow = "fold"
    return rendered


def _error(error: Mapping[str, Any], *, traceback: bool) -> Text:
    text = Text(f"{error.get('name', 'Error')}: {error.get('message', '')}", style="red")
    if traceback and error.get("traceback"):
        text.append("\n" + str(error["traceback"]).rstrip(), style="dim")
    return text


def _attempt_errors(errors: list[dict[str, Any]]) -> Text:
    """`#1 StorageTimeout: ...` per failed attempt, one per line."""
    text = Text()
    for index, error in enumerate(errors):
        if index:
            text.append("\n")
        text.append(f"#{error.get('attempt', index + 1)} ", style="bold")
        text.append_text(_error(error, traceback=False))
    return text


def steps_table(steps: list[StepInfo]) -> Table:
    """One row per step, with every failed attempt's error in the last column."""
    table = Table(title="steps", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("errors")
    for step in steps:
        table.add_row(Text(step.id), status_text(step.status),
                      Text(str(step.attempts)), Text(format_duration(step.duration_ms)),
                      _attempt_errors(step.errors) if step.errors else Text("-", style="dim"))
    return table


def _step_tracebacks(steps: list[StepInfo]) -> list[RenderableType]:
    parts: list[RenderableType] = []
    for step in steps:
        for error in step.errors:
            parts.append(Text(f"{step.id} attempt {error.get('attempt', '?')}", style="bold"))
            parts.append(_error(error, traceback=True))
    return parts
