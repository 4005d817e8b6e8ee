"""Embedded servers: one `erp` process owns a data folder's PostgreSQL and nats-server; another
started there meanwhile uses them, and stops neither when it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from erp.embedded import free_port
from tests.conftest import ROOT


def _ready(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/readyz", timeout=2).json().get("status") == "ready")
    except (httpx.HTTPError, ValueError):
        return False


def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.2)


def test_a_second_process_on_the_folder_uses_the_running_servers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_")}
    env.update(ERP_DATA_DIR=str(tmp_path / "data"), ERP_LOG_LEVEL="info")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        serve_log = (tmp_path / "serve.log").open("wb")
        started.append(subprocess.Popen([sys.executable, "-m", "erp", "serve", "--port", str(port)], env=env,
                                        cwd=ROOT, stdout=serve_log, stderr=subprocess.STDOUT))
        _until(lambda: _ready(url), 90, "erp serve ready")
        relay_log = tmp_path / "relay.log"
        relay = subprocess.Popen([sys.executable, "-m", "erp", "relay"], env=env, cwd=ROOT,
                                 stdout=relay_log.open("wb"), stderr=subprocess.STDOUT)
        started.append(relay)
        _until(lambda: "using the embedded servers of another erp process" in relay_log.read_text()
               or relay.poll() is not None, 60, "the relay using the running servers")
        time.sleep(1.0)
        assert relay.poll() is None, relay_log.read_text()
        assert _ready(url), "the first process's servers were stopped"
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0, relay_log.read_text()
        time.sleep(1.0)
        assert _ready(url), "the relay stopped servers it does not own"
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
