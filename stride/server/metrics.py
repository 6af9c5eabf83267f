"""Prometheus metrics at /metrics, read from the store at scrape time.

Nothing is counted in this process: every figure comes from the store, so any number of
servers and workers agree. Step durations are a gauge histogram of the steps that ran in the
last `STEP_WINDOW_MS` (a window, not an ever-growing counter).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from stride.app import Stride
from stride.errors import StoreError
from stride.server.views import WORKER_ALIVE_MS, now_ms
from stride.stores.base import ACTIVITY_LIMIT, QueueStats, RunCount, StepTiming, WorkerRow

STEP_WINDOW_MS = 15 * 60_000
STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  300.0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: int
    counts: Sequence[RunCount]
    queue: QueueStats
    steps: Sequence[StepTiming]
    workers: Sequence[WorkerRow]


async def snapshot(app: Stride) -> Snapshot:
    store = await app.store()
    now = now_ms()
    return Snapshot(now=now, counts=await store.run_counts(), queue=await store.queue_stats(now),
                    steps=await store.step_timings(since_ms=now - STEP_WINDOW_MS,
                                                   limit=ACTIVITY_LIMIT),
                    workers=await store.list_workers(since_ms=now - WORKER_ALIVE_MS))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def step_histogram(steps: Sequence[StepTiming]) -> GaugeHistogramMetricFamily:
    family = GaugeHistogramMetricFamily(
        "stride_step_duration_seconds",
        f"Duration of the last attempt of steps that ran in the last {STEP_WINDOW_MS // 60000} min",
        labels=["job", "status"])
    groups: dict[tuple[str, str], list[float]] = {}
    for step in steps:
        groups.setdefault((step.job_id, step.status), []).append(step.duration_ms / 1000)
    for labels, durations in sorted(groups.items()):
        buckets = [(str(bound), float(sum(d <= bound for d in durations)))
                   for bound in STEP_BUCKETS_S]
        buckets.append(("+Inf", float(len(durations))))
        family.add_metric(list(labels), buckets, gsum_value=sum(durations))
    return family


class SnapshotCollector(Collector):
    """Exposes one snapshot; a fresh registry is made for every scrape."""

    def __init__(self, data: Snapshot | None) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        yield _gauge("stride_store_up", "1 if the store answered this scrape",
                     0 if self.data is None else 1)
        if self.data is None:
            return
        data = self.data
        runs = GaugeMetricFamily("stride_runs", "Runs in the store by job and status",
                                 labels=["job", "status"])
        for count in data.counts:
            runs.add_metric([count.job_id, count.status], count.count)
        yield runs
        yield _gauge("stride_queue_depth", "Runs due now that no worker has claimed",
                     data.queue.due)
        yield _gauge("stride_runs_waiting", "Runs queued, sleeping or waiting (due or not)",
                     data.queue.waiting)
        yield _gauge("stride_runs_running", "Runs held by a worker", data.queue.running)
        oldest = data.queue.oldest_due_at
        yield _gauge("stride_queue_lag_seconds", "Age of the oldest due, unclaimed run",
                     0 if oldest is None else max(0, data.now - oldest) / 1000)
        yield _gauge("stride_workers_alive", "Workers with a heartbeat in the last minute",
                     len(data.workers))
        yield step_histogram(data.steps)


async def metrics_response(app: Stride) -> Response:
    try:
        data: Snapshot | None = await snapshot(app)
    except StoreError:
        data = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(data))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
