"""The jobs page's charts: runs, failures, p50/p95 duration and queue lag per minute, last hour."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stride.server.charts import Rect, bar_chart, human_ms, polyline
from stride.server.views import now_ms
from stride.stores.base import ACTIVITY_LIMIT, JobActivity, Store

MINUTE_MS = 60_000
MINUTES = 60


@dataclass(frozen=True, slots=True)
class JobChart:
    runs: list[Rect]
    failures: list[Rect]
    p50: list[str]
    p95: list[str]
    lag: list[str]
    total: int
    failed: int
    p50_ms: int | None
    p95_ms: int | None
    lag_ms: float | None
    max_runs: int
    max_duration_ms: int
    max_lag_ms: float


def _minute_titles(since: int, label: str, values: Sequence[float | None]) -> list[str]:
    return [f"{(since + i * MINUTE_MS) // 1000 % 86400 // 3600:02d}:"
            f"{(since + i * MINUTE_MS) // 60000 % 60:02d} UTC: {label} {value or 0:g}"
            for i, value in enumerate(values)]


def _chart(since: int, minutes: list[JobActivity], hour: JobActivity | None) -> JobChart:
    by_minute = {(row.bucket_start - since) // MINUTE_MS: row for row in minutes}
    rows = [by_minute.get(i) for i in range(MINUTES)]
    runs = [float(row.runs) if row else 0.0 for row in rows]
    failed = [float(row.failed) if row else 0.0 for row in rows]
    p50 = [row.p50_ms if row else None for row in rows]
    p95 = [row.p95_ms if row else None for row in rows]
    lag = [row.lag_ms if row else None for row in rows]
    top_duration = max([v for v in p95 if v is not None], default=0)
    top_lag = max([v for v in lag if v is not None], default=0.0)
    return JobChart(
        runs=bar_chart(runs, _minute_titles(since, "runs", runs)),
        failures=bar_chart(failed, _minute_titles(since, "failed", failed)),
        p50=polyline(p50, top_duration), p95=polyline(p95, top_duration),
        lag=polyline(lag, top_lag), total=hour.runs if hour else 0,
        failed=hour.failed if hour else 0, p50_ms=hour.p50_ms if hour else None,
        p95_ms=hour.p95_ms if hour else None, lag_ms=hour.lag_ms if hour else None,
        max_runs=int(max(runs, default=0)), max_duration_ms=top_duration, max_lag_ms=top_lag)


async def job_charts(store: Store, job_ids: Sequence[str]) -> dict[str, JobChart]:
    """One chart set per job over the last 60 whole minutes (two bounded aggregations)."""
    since = (now_ms() // MINUTE_MS - (MINUTES - 1)) * MINUTE_MS
    minutes = await store.job_activity(since_ms=since, bucket_ms=MINUTE_MS, limit=ACTIVITY_LIMIT)
    hours = await store.job_activity(since_ms=since, bucket_ms=MINUTES * MINUTE_MS,
                                     limit=ACTIVITY_LIMIT)
    per_job: dict[str, list[JobActivity]] = {}
    for row in minutes:
        per_job.setdefault(row.job_id, []).append(row)
    hour = {row.job_id: row for row in hours}
    return {job: _chart(since, per_job.get(job, []), hour.get(job)) for job in job_ids}


__all__ = ["JobChart", "human_ms", "job_charts"]
