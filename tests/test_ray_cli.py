"""`python -m personalive_trt.web --echo --ray` (the entry point `scripts/soak.py` spawns; `serve --ray` runs the
same `serve_forever`): it starts its own local Ray, serves, and on SIGTERM shuts Serve and that Ray down and
exits 0, leaving no Ray process behind."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")


def ray_processes() -> set[int]:
    """Pids of Ray's per-cluster daemons (gcs_server, raylet) now running on this machine."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() in ("gcs_server", "raylet"):
                        pids.add(int(entry))
            except OSError:
                continue
    return pids


def test_sigterm_shuts_down_serve_and_the_local_ray_it_started():
    before = ray_processes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "personalive_trt.web", "--echo", "--ray", "--port", str(port),
                                "--replicas", "1", "--cpus-per-replica", "0.25", "--resolution", "64"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
                if len(health["replicas"]) == 1:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        assert health is not None and len(health["replicas"]) == 1, (health, process.poll())
        started = ray_processes() - before
        assert started, "the entry point started no Ray of its own"
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    deadline = time.monotonic() + 30
    while ray_processes() & started and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() & started, "Ray processes left running after SIGTERM"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
