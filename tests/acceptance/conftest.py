"""Real `stride worker` processes for acceptance tests, killed for sure when a test ends.

`workers.start("tests.acceptance.apps.crashy:jobs")` runs `python -m stride worker ...` from
the repository root (so the test apps import) with STRIDE_DATABASE_URL set to the test's
SQLite file; each process writes its log to a file the failure message can quote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import eventually

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    """One `stride worker` process."""

    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    async def exit_code(self, *, timeout: float = 20.0) -> int:
        """Wait for the process to end; its exit status (negative: killed by that signal)."""

        async def ended() -> bool:
            return self.process.poll() is not None

        await eventually(ended, timeout=timeout, interval=0.02,
                         what=f"worker {self.pid} to exit; its log:\n{self.log()}")
        return self.process.returncode

    async def stop(self) -> int:
        """SIGTERM, then wait: a graceful stop."""
        self.send(signal.SIGTERM)
        return await self.exit_code()


@dataclass
class Workers:
    """Starts worker processes on one database; the fixture kills leftovers at teardown."""

    database_url: str
    log_dir: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, app: str, *, concurrency: int = 4, lease: float = 2.0,
              grace: float = 5.0) -> WorkerProcess:
        log_path = self.log_dir / f"worker-{len(self.started) + 1}.log"
        env = {**os.environ, "STRIDE_DATABASE_URL": self.database_url,
               "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "stride", "worker", app, "--concurrency",
                 str(concurrency), "--lease", str(lease), "--grace", str(grace)],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(process, log_path)
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name} (pid {w.pid}) ---\n{w.log()}"
                         for w in self.started)

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(timeout=10)


@pytest.fixture
def workers(sqlite_url: str, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pool = Workers(sqlite_url, log_dir)
    yield pool
    pool.kill_all()
