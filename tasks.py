#!/usr/bin/env python3
"""The project's two commands, runnable on a fresh machine with only Python 3.11+.

    python3 tasks.py demo    the engine on embedded SQLite with the example app, live
    python3 tasks.py test    lint, type checks and the whole test suite

Both create `.venv` and install the project with its dev extras on first use (and again
whenever pyproject.toml changes), so there is nothing else to set up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".stride-installed"
TEST_WORKERS = os.environ.get("STRIDE_TEST_WORKERS", "4")


def _python() -> str:
    return str(BIN / "python")


def ensure_environment() -> None:
    """Create the virtualenv and (re)install the project when pyproject.toml changed."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing stride with its dev dependencies into .venv ...", flush=True)
    run([_python(), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run([_python(), "-m", "pip", "install", "--quiet", "-e", ".[dev]"])
    STAMP.write_text(wanted)


def run(command: list[str], **kwargs: object) -> None:
    result = subprocess.run(command, cwd=ROOT, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.exit(result.returncode)


def postgres_is_up(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ensure_postgres() -> None:
    """Start the local PostgreSQL cluster if it is installed but down (CI machines)."""
    if os.environ.get("STRIDE_TEST_POSTGRES_URL") or postgres_is_up():
        return
    clusters = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") and clusters.is_dir():
        for version in sorted(p.name for p in clusters.iterdir()):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                            "start"], check=False)
    if not postgres_is_up():
        print("PostgreSQL is not reachable on 127.0.0.1:5432; PostgreSQL tests will fail. "
              "Start it, or set STRIDE_TEST_POSTGRES_URL to another server.", file=sys.stderr)


def ensure_chromium() -> None:
    """Debian's Chromium for the dashboard's browser tests (Playwright drives it headless)."""
    if Path("/usr/bin/chromium").exists():
        return
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        print("installing Debian's chromium for the browser tests ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not Path("/usr/bin/chromium").exists():
        print("chromium is not installed: the browser tests will be skipped "
              "(apt-get install chromium)", file=sys.stderr)


def demo() -> None:
    ensure_environment()
    print("Stride demo: the example app on SQLite (.stride/stride.db). Ctrl-C to stop.")
    run([str(BIN / "stride"), "dev", "examples.porygon.app:jobs", "--demo", *sys.argv[2:]])


def test() -> None:
    ensure_environment()
    ensure_postgres()
    ensure_chromium()
    run([str(BIN / "ruff"), "check", "stride", "tests", "examples", "bench", "tasks.py"])
    run([str(BIN / "mypy"), "--strict", "stride", "examples"])
    run([_python(), "-m", "pytest", "-n", TEST_WORKERS, "-q", "-p", "no:cacheprovider",
         *sys.argv[2:]])


COMMANDS = {"demo": demo, "test": test}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    COMMANDS[sys.argv[1]]()
