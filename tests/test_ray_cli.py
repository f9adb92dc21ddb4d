"""`python -m personalive_trt.web --echo --ray` (the entry point `scripts/soak.py` spawns; `serve --ray` runs the
same `serve_forever`) as a process, beside an external Ray cluster started here with `ray start --head`.

* Without ``--address`` it starts its own local Ray even while another cluster runs and ``RAY_ADDRESS`` names it
  (never attaches by accident), and on SIGTERM shuts Serve and that Ray down and exits 0, leaving no Ray process
  of its own behind and the other cluster running.
* With ``--address`` it joins the external cluster, serves a session there, and on SIGTERM deletes its apps
  only: the cluster (which it did not start) keeps running.

The external cluster is stopped with ``ray stop``, which stops every Ray on this machine: do not run this module
beside another that runs Ray (the test suite runs modules one after another).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

RAY = Path(sys.executable).with_name("ray")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Token authentication, as a cluster should run: its own token, given to whoever joins (never ~/.ray/auth_token).
#: Ray enables it for `ray start` when a token exists, but never for a client given an explicit address.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def external_cluster():
    """A Ray cluster this process started (`ray start --head`, 2 CPUs, no dashboard): its address and daemons."""
    if not RAY.is_file():
        pytest.skip(f"{RAY} not found")
    before = ray_processes()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    env = {**os.environ, **AUTH}
    try:
        subprocess.run([str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "2",
                        "--include-dashboard=false", "--temp-dir", temp_dir, "--object-store-memory",
                        str(100 * 2**20), "--disable-usage-stats"], check=True, capture_output=True, timeout=120,
                       env=env)
        daemons = ray_processes() - before
        assert daemons, "ray start left no gcs_server/raylet running"
        yield f"127.0.0.1:{port}", daemons
    finally:
        subprocess.run([str(RAY), "stop"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp_dir, ignore_errors=True)


def spawn(port: int, *options: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "personalive_trt.web", "--echo", "--ray", "--port", str(port),
                             "--replicas", "1", "--cpus-per-replica", "0.25", "--resolution", "64", "--no-crop",
                             *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def wait_serving(process: subprocess.Popen, port: int) -> dict:
    deadline, health = time.monotonic() + 120, None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
            if len(health["replicas"]) == 1:
                return health
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"not serving: health {health}, exit {process.poll()}, stderr "
                         f"{process.stderr.read() if process.poll() is not None else ''}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(90) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def animated_frame(port: int) -> bytes:
    """Upload the sample reference, start a session, send driving frames: the first animated JPEG."""
    import cv2
    import numpy as np
    from websockets.sync.client import connect

    from personalive_trt.media.sample import sample_reference

    upload = httpx.post(f"http://127.0.0.1:{port}/api/reference", timeout=30,
                        files={"file": ("ref.png", sample_reference().read_bytes(), "image/png")})
    assert upload.status_code == 200, upload.text
    ok, driving = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))
    assert ok
    with connect(f"ws://127.0.0.1:{port}/api/ws", open_timeout=30, max_queue=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "hello"
        ws.send(json.dumps({"type": "start", "reference": upload.json()["id"]}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ws.send(driving.tobytes())
            try:
                message = ws.recv(timeout=0.05)
            except TimeoutError:
                continue
            if isinstance(message, bytes):
                return message
            assert json.loads(message)["type"] != "error", message
    raise AssertionError("no animated frame within 30 s")


def test_without_address_it_starts_its_own_ray_even_beside_a_running_cluster(external_cluster):
    address, external = external_cluster
    before = ray_processes()
    port = free_port()
    process = spawn(port, env={"RAY_ADDRESS": address, **AUTH})  # a running cluster, named in the environment
    try:
        wait_serving(process, port)
        started = ray_processes() - before
        assert started, "the entry point started no Ray of its own (it attached to the running cluster)"
        stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    deadline = time.monotonic() + 30
    while ray_processes() & started and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() & started, "Ray processes left running after SIGTERM"
    assert external <= ray_processes(), "the other cluster was stopped"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)


def test_with_address_it_joins_the_cluster_and_sigterm_leaves_the_cluster_running(external_cluster):
    address, external = external_cluster
    before = ray_processes()
    port = free_port()
    process = spawn(port, "--address", address, env=AUTH)
    try:
        wait_serving(process, port)
        assert ray_processes() == before, "--address started a Ray of its own"
        assert animated_frame(port)[:2] == b"\xff\xd8"  # a JPEG, animated on the cluster's replica
        stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert external <= ray_processes(), "SIGTERM stopped a cluster serve did not start"
    # Serve's HTTP proxy stays on the cluster (other apps may use it); our apps are gone from it
    assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10).status_code == 404


def test_a_cluster_that_refuses_to_be_joined_is_a_one_line_error(external_cluster):
    address, _ = external_cluster
    # no token: Ray retries for about 20 s before it gives up
    process = spawn(free_port(), "--address", address, env={"RAY_AUTH_MODE": "disabled"})
    try:
        assert process.wait(120) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    last = process.stderr.read().strip().splitlines()[-1]
    assert last.startswith(f"error: cannot join the Ray cluster at {address}: ") and "RAY_AUTH_MODE" in last, last
