"""Worker processes for the benchmarks: `jobs.worker(...)` in spawned processes, or the CLI.

Spawned processes (the default) run `bench.apps:jobs` through `jobs.worker(concurrency=...)`
exactly as `python -m stride worker` does, and report back what their store's writer
committed. `cli=True` runs the real `python -m stride worker` command instead (no write
counters then). Either way the app gets the database URL through STRIDE_DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from bench._db import Probe

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL_ENV = "STRIDE_DATABASE_URL"
STOP_POLL_SECONDS = 0.05


def serve(url: str, concurrency: int, stop: Event, stats: Queue[dict[str, float]],
          gc_freeze: bool = False) -> None:
    """A worker process's main: run a worker until `stop` is set, then report its writes."""
    os.environ[DATABASE_URL_ENV] = url
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(concurrency, stop, stats, gc_freeze))


async def _serve(concurrency: int, stop: Event, stats: Queue[dict[str, float]],
                 gc_freeze: bool) -> None:
    from bench.apps import jobs

    async with jobs.worker(concurrency=concurrency):
        if gc_freeze:  # what `stride worker` could do once the app is loaded: see the report
            gc.freeze()
        with _GcClock() as gc_clock:
            started = _cpu_seconds()
            while not stop.is_set():  # noqa: ASYNC110 (a process-shared Event has no async wait)
                await asyncio.sleep(STOP_POLL_SECONDS)
            cpu = _cpu_seconds() - started
    store = await jobs.store()
    write_stats = getattr(store, "write_stats", None)
    await jobs.aclose()
    report = dataclasses.asdict(write_stats) if write_stats is not None else {}
    stats.put({**report, "cpu_ms": cpu * 1000, "gc_ms": gc_clock.seconds * 1000})


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class _GcClock:
    """CPU time the garbage collector took on this thread while the block ran."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> _GcClock:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


class WorkerPool:
    """`count` worker processes with `concurrency` slots each, on the store at `url`."""

    def __init__(self, url: str, count: int, concurrency: int, *, cli: bool = False,
                 gc_freeze: bool = False) -> None:
        self.url, self.count, self.concurrency, self.cli = url, count, concurrency, cli
        self.gc_freeze = gc_freeze
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._stats: Queue[dict[str, float]] = context.Queue()
        self._processes: list[Any] = []
        self._context = context

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._processes]

    def start(self, probe: Probe, timeout: float = 60.0) -> None:
        """Start the workers and return once each registered in the store."""
        for _ in range(self.count):
            self._processes.append(self._spawn_cli() if self.cli else self._spawn())
        deadline = time.monotonic() + timeout
        while probe.workers() < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not register within {timeout} s")
            time.sleep(0.05)

    def _spawn(self) -> Any:
        process = self._context.Process(target=serve, name="stride-bench-worker", args=(
            self.url, self.concurrency, self._stop, self._stats, self.gc_freeze))
        process.start()
        return process

    def _spawn_cli(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, DATABASE_URL_ENV: self.url}
        return subprocess.Popen(
            [sys.executable, "-m", "stride", "--log-level", "WARNING", "worker",
             "bench.apps:jobs", "--concurrency", str(self.concurrency)], cwd=ROOT, env=env)

    def stop(self) -> list[dict[str, float]]:
        """Stop every worker; the write counters of each (empty in CLI mode)."""
        if self.cli:
            for process in self._processes:
                process.terminate()
            for process in self._processes:
                process.wait(timeout=60)
            return []
        self._stop.set()
        reports = [self._stats.get(timeout=60) for _ in self._processes]
        for process in self._processes:
            process.join(timeout=60)
        return reports
