"""Listening sockets of a process tree (personalive_trt/web/listening.py), and the server's: nothing beyond loopback
under the defaults."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from live_server import free_port
from personalive_trt.web.listening import Listener, exposed, listening_sockets, process_tree

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")


def test_sockets_of_this_process_and_of_a_child_are_found_with_their_address():
    loopback, everywhere = socket.socket(), socket.socket()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    child = None
    try:
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        everywhere.bind(("0.0.0.0", 0))
        everywhere.listen()
        udp.bind(("127.0.0.1", 0))
        code = ("import socket, sys, time; s = socket.socket(socket.AF_INET6); s.bind(('::1', 0)); s.listen(); "
                "print(s.getsockname()[1], flush=True); time.sleep(60)")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        child_port = int(child.stdout.readline())
        assert child.pid in process_tree(os.getpid())
        found = {(s.proto, s.address, s.port) for s in listening_sockets()}
        assert ("tcp", "127.0.0.1", loopback.getsockname()[1]) in found
        assert ("tcp", "0.0.0.0", everywhere.getsockname()[1]) in found
        assert ("udp", "127.0.0.1", udp.getsockname()[1]) in found
        assert ("tcp6", "::1", child_port) in found
        assert [s.port for s in exposed(listening_sockets())] == [everywhere.getsockname()[1]]
    finally:
        for s in (loopback, everywhere, udp):
            s.close()
        if child is not None:
            child.kill()
            child.wait()


def test_loopback_covers_ipv4_mapped_addresses():
    assert Listener("tcp6", "::ffff:127.0.0.1", 1, 1, "x").loopback
    assert not Listener("tcp6", "::", 1, 1, "x").loopback and not Listener("tcp", "0.0.0.0", 1, 1, "x").loopback
    assert str(Listener("tcp6", "::1", 80, 7, "python")) == "tcp6 [::1]:80 (python, pid 7)"


def test_the_server_listens_on_loopback_only_under_the_defaults():
    """``python -m personalive_trt.web --echo`` (the app and server ``serve`` runs) with its default host: every
    listening socket of its process tree is on loopback, and one of them is the HTTP port."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "personalive_trt.web", "--echo", "--port", str(port),
                               "--resolution", "64"])
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the server exited with {server.returncode}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 120 s"
            time.sleep(0.2)
        sockets = listening_sockets(server.pid)
        assert port in {s.port for s in sockets}, sockets
        assert exposed(sockets) == [], f"listening beyond loopback: {[str(s) for s in exposed(sockets)]}"
    finally:
        server.terminate()
        server.wait(30)
