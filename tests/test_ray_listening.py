"""`serve --ray` with a local Ray listens on loopback, but for the one thing stock Ray binds to every interface.

One process (`python -m personalive_trt.web --echo --ray`, the entry point that runs `serve --ray`'s
`run_server`) with the defaults, one Ray start: every listening socket of its process tree (Ray's GCS, raylets,
workers, agents, the Serve proxy) is on 127.0.0.1 or ::1, except each Serve replica's inter-deployment gRPC
server (Ray 2.60 adds ``[::]:0`` for it, with no option). Those refuse a call without the cluster's token, made
from the machine's network address, and the start-up names their ports in one line.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("ray")
grpc = pytest.importorskip("grpc")
httpx = pytest.importorskip("httpx")

from live_server import free_port  # noqa: E402
from personalive_trt.web.listening import exposed, listening_sockets  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

#: What the user's environment may hold that would change the defaults under test (serve sets the first two).
RAY_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_ADDRESS")


def network_address() -> str:
    """This machine's address as another machine would call it (loopback when it has none)."""
    try:
        addresses = socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        addresses = []
    return next((a for a in addresses if not a.startswith("127.")), "127.0.0.1")


def test_serve_ray_listens_on_loopback_but_for_the_replicas_token_checked_grpc():
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in RAY_ENV}
    with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: Ray's logs would fill a pipe and block it
        process = subprocess.Popen([sys.executable, "-m", "personalive_trt.web", "--echo", "--ray", "--port", str(port),
                                    "--replicas", "1", "--cpus-per-replica", "0.25", "--resolution", "64",
                                    "--no-crop"], stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env)
        try:
            deadline, health = time.monotonic() + 180, None
            while health is None or len(health.get("replicas", [])) != 1:
                assert process.poll() is None, f"exited with {process.returncode}"
                assert time.monotonic() < deadline, f"not serving within 180 s: {health}"
                time.sleep(0.5)
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
                except (httpx.HTTPError, ValueError):
                    pass
            sockets = listening_sockets(process.pid)
            assert port in {s.port for s in sockets if s.loopback}, [str(s) for s in sockets]
            beyond = exposed(sockets)
            assert beyond and all(s.command.startswith("ray::ServeRepli") and s.address in ("::", "0.0.0.0")
                                  for s in beyond), f"beyond loopback: {[str(s) for s in beyond]}"
            assert len(sockets) > 2 * len(beyond)  # GCS, raylet, workers, agents, proxy: all on loopback
            address = network_address()
            for listener in beyond:
                channel = grpc.insecure_channel(f"{address}:{listener.port}")
                call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest", request_serializer=lambda b: b,
                                           response_deserializer=lambda b: b)
                with pytest.raises(grpc.RpcError) as refused:
                    call(b"", timeout=10)
                channel.close()
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (str(listener), refused.value)
            process.send_signal(signal.SIGTERM)
            assert process.wait(90) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        stderr.seek(0)
        notes = [line for line in stderr.read().splitlines() if line.startswith("note: listening beyond loopback")]
    assert len(notes) == 1 and "RAY_AUTH_MODE=token" in notes[0], notes
    assert all(f":{s.port} " in notes[0] for s in beyond), notes[0]
