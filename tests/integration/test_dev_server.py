"""`stride dev` serves the HTTP API and dashboard beside its worker, on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps_cli.flaky_steps:jobs"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get_json(url: str, *, data: Any = None) -> Any:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_until_serving(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get_json(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_dev_serves_ingestion_api_and_dashboard_while_it_works(sqlite_url: str) -> None:
    port = free_port()
    env = {**os.environ, "STRIDE_DATABASE_URL": sqlite_url}
    dev = subprocess.Popen([sys.executable, "-m", "stride", "dev", APP, "--no-live",
                            "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{base}/api/v1/jobs")
        accepted = get_json(f"{base}/e/any-key-in-dev", data={"name": "test/three-steps",
                                                              "data": {}})
        [event_id] = accepted["ids"]
        deadline = time.monotonic() + 30
        while True:
            runs = get_json(f"{base}/api/v1/runs?event_id={event_id}")["data"]
            if runs and runs[0]["status"] == "completed":
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.2)
        with urllib.request.urlopen(f"{base}/", timeout=5) as page:
            assert page.status == 200
            assert "text/html" in page.headers["content-type"]
    finally:
        dev.send_signal(signal.SIGINT)
        _out, err = dev.communicate(timeout=30)
    assert dev.returncode == 0, err
    assert "Traceback" not in err
