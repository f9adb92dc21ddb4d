"""A real uvicorn server on loopback in a thread, for what FastAPI's test client cannot show: long-lived streaming
responses, a refused WebSocket handshake's HTTP status, answers while other requests are held open."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app, max_message_bytes: int = 2 * 1024 * 1024):
    """Serve ``app`` on 127.0.0.1 (lifespan included) for the ``with`` block; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ws_max_size=max_message_bytes))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


class MjpegViewer(threading.Thread):
    """One MJPEG viewer: holds the response open on a thread, counting its parts, until it ends (or, with
    ``stop`` set, at the next part); ``status`` is the response's, ``opened``/``ended`` say when."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.status, self.parts, self.stop = url, None, 0, False
        self.opened, self.ended = threading.Event(), threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(30, read=60)) as response:
                self.status = response.status_code
                self.opened.set()
                for chunk in response.iter_raw():
                    self.parts += chunk.count(b"--frame\r\n")
                    if self.stop:
                        return
        except httpx.HTTPError:  # the server went away: the viewer has ended
            pass
        finally:
            self.opened.set()
            self.ended.set()
