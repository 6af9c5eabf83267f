"""Real `stride worker` processes for acceptance tests, killed for sure when a test ends.

`workers.start("tests.acceptance.apps.crashy:jobs")` runs `python -m stride worker ...` from
the repository root (so the test apps import) with STRIDE_DATABASE_URL set to the test's
SQLite file; each process writes its log to a file the failure message can quote.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
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
    db_path: Path
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

    async def wait_until_up(self, *, timeout: float = 30.0) -> None:
        """Wait for the worker's first heartbeat: from then on it handles SIGTERM gracefully.

        (A SIGTERM that arrives while Python is still importing the app ends the process
        the default way, with status -15, before Stride could install its handler.)
        """

        async def heartbeat_seen() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.pid} ended early; its log:\n{self.log()}")
            return self.pid in worker_pids(self.db_path)

        await eventually(heartbeat_seen, timeout=timeout, interval=0.05,
                         what=f"worker {self.pid} to start; its log:\n{self.log()}")

    async def stop(self) -> int:
        """SIGTERM once the worker is up, then wait: a graceful stop."""
        await self.wait_until_up()
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
        worker = WorkerProcess(process, log_path, Path(self.database_url.removeprefix("sqlite:///")))
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


def worker_pids(db_path: Path) -> set[int]:
    """The pids of the workers that have sent a heartbeat to this database."""
    if not db_path.exists():
        return set()
    try:
        with closing(sqlite3.connect(db_path)) as conn:
            rows = conn.execute("SELECT info FROM workers").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return set()
    return {json.loads(info).get("pid") for (info,) in rows}


@pytest.fixture
def workers(sqlite_url: str, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pool = Workers(sqlite_url, log_dir)
    yield pool
    pool.kill_all()
