"""Helpers for the tests that run `stride worker` subprocesses against PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
APP = "tests.integration.apps_pg.jobs:jobs"


def start_worker(database_url: str, log: Path, *, concurrency: int = 5, lease: float = 2.0,
                 slow_seconds: float = 4.0) -> subprocess.Popen[str]:
    env = {**os.environ, "STRIDE_DATABASE_URL": database_url, "STRIDE_TEST_LOG": str(log),
           "STRIDE_TEST_SLOW_SECONDS": str(slow_seconds)}
    return subprocess.Popen(
        [sys.executable, "-m", "stride", "--log-level", "WARNING", "worker", APP,
         "--concurrency", str(concurrency), "--lease", str(lease), "--grace", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_workers(processes: list[subprocess.Popen[str]]) -> list[str]:
    """SIGTERM each (SIGKILL if it hangs); returns their stderr for failure messages."""
    outputs = []
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            _, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        outputs.append(err)
    return outputs


@dataclass(frozen=True, slots=True)
class Execution:
    run_id: str
    step: str
    pid: int
    start_us: int
    end_us: int | None


def executions(log: Path) -> list[Execution]:
    """Each step execution in the log, matched start to end by (run, step, pid)."""
    if not log.exists():
        return []
    open_ones: dict[tuple[str, str, int], int] = {}
    done: list[Execution] = []
    for line in log.read_text().splitlines():
        at, run_id, step, phase, pid = line.split()
        key = (run_id, step, int(pid))
        if phase == "start":
            open_ones[key] = int(at)
        else:
            done.append(Execution(run_id, step, int(pid), open_ones.pop(key), int(at)))
    done.extend(Execution(r, s, p, at, None) for (r, s, p), at in open_ones.items())
    return done


def started(log: Path, step: str) -> Counter[str]:
    """How many times `step` started, per run."""
    return Counter(e.run_id for e in executions(log) if e.step == step)


def max_overlap(spans: list[tuple[int, int]]) -> int:
    """The largest number of [start, end) spans that were open at the same instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, delta in edges:  # at equal times -1 sorts first: touching spans do not overlap
        current += delta
        most = max(most, current)
    return most
