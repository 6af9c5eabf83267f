"""A private, throw-away PostgreSQL server for the tests that restart the server.

Restarting the shared server at 127.0.0.1:5432 would break every other test running at
the same time (the suite runs in parallel), so these tests `initdb` their own cluster in a
temporary directory, on a free port, run as the `postgres` user, and remove it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_USER = "postgres"


def _bin_dir() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class PrivateServer:
    bin_dir: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, action: str, *extra: str) -> subprocess.CompletedProcess[str]:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        return subprocess.run(
            ["runuser", "-u", SERVER_USER, "--", str(self.bin_dir / "pg_ctl"), "-D",
             str(self.data / "db"), "-w", "-t", "60", "-o", options, action, *extra,
             # the server must not hold our pipes open: its output goes to a file
             *(["-l", str(self.data / "log")] if action in {"start", "restart"} else [])],
            capture_output=True, text=True, timeout=90)

    def restart(self) -> None:
        result = self.pg_ctl("restart", "-m", "fast")
        assert result.returncode == 0, result.stderr


@contextmanager
def private_server() -> Iterator[PrivateServer]:
    """initdb + start a server; stop and delete it on exit, whatever happened."""
    bin_dir = _bin_dir()
    if bin_dir is None or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and the PostgreSQL server binaries to run a private server")
    data = Path(tempfile.mkdtemp(prefix="stride-pg-"))
    shutil.chown(data, SERVER_USER, SERVER_USER)
    server = PrivateServer(bin_dir, data, _free_port())
    try:
        subprocess.run(["runuser", "-u", SERVER_USER, "--", str(bin_dir / "initdb"), "-D",
                        str(data / "db"), "-A", "trust", "-U", SERVER_USER, "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        started = server.pg_ctl("start")
        assert started.returncode == 0, started.stderr
        yield server
    finally:
        server.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(data, ignore_errors=True)
