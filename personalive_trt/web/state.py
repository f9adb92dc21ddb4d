"""What one server process shares between its routes and its WebSocket sessions: settings, the animator pool,
the reference store, the counters and the MJPEG feed. Routes and sessions read it from ``app.state.server``, so
any FastAPI app that sets it (see :func:`personalive_trt.web.routes.mount`) serves the same API.

A process without animators (the Ray app's front, which serves the page, uploads and health while the
animators live in other replicas) has ``pool=None`` and gets its health, references and MJPEG frames from the
cluster through the same small interfaces: ``health()``, ``references.add/get``, ``mjpeg.next_frame``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from personalive_trt.web.pool import AnimatorPool
from personalive_trt.web.settings import ServeSettings

COUNTERS = ("sessions", "connections", "busy_refusals", "refused_connections", "oversize_messages", "bad_messages",
            "idle_closes")


def multipart_part(jpeg: bytes) -> bytes:
    """One part of a ``multipart/x-mixed-replace; boundary=frame`` MJPEG response."""
    return (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
            + b"\r\n\r\n" + jpeg + b"\r\n")


async def mjpeg_frames(next_frame, max_frames: int | None, timeout: float):
    """MJPEG parts from ``await next_frame(version, timeout)`` -> ``(version, jpeg)`` newer than ``version``, or
    None after ``timeout`` s without one (the response then ends if ``max_frames`` is set)."""
    sent, version = 0, -1
    while max_frames is None or sent < max_frames:
        newer = await next_frame(version, timeout)
        if newer is None:
            if max_frames is not None:
                return
            continue
        version, jpeg = newer
        yield multipart_part(jpeg)
        sent += 1


class MjpegBroadcast:
    """The newest output JPEG of any session, for ``/api/stream.mjpg`` readers (OBS, a browser tab)."""

    def __init__(self) -> None:
        self.jpeg: bytes | None = None
        self.version = 0
        self.changed = asyncio.Event()

    def publish(self, jpeg: bytes) -> None:
        self.jpeg = jpeg
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()  # readers waiting on the old event wake; new ones wait for the next

    async def next_frame(self, version: int, timeout: float) -> tuple[int, bytes] | None:
        if self.version == version or self.jpeg is None:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return self.version, self.jpeg

    def frames(self, max_frames: int | None, timeout: float):
        return mjpeg_frames(self.next_frame, max_frames, timeout)


@dataclass
class ServerState:
    settings: ServeSettings
    references: object  # async add(image) -> id, async get(id) -> image | None (ReferenceStore or a remote one)
    resolution: int
    pool: AnimatorPool | None = None  # None in a process whose animators run elsewhere (the Ray app's front)
    health: Callable[[], Awaitable[dict]] | None = None  # default: this process's own report
    node: str | None = None  # where this process runs (default: the host name)
    resources: dict | None = None  # what the cluster granted this replica (Ray: num_cpus, num_gpus)
    mjpeg_feed: object | None = None  # has frames(max_frames, timeout); default: a local MjpegBroadcast
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def mjpeg(self):
        if self.mjpeg_feed is None:  # apps driven without their lifespan (plain TestClient calls)
            self.mjpeg_feed = MjpegBroadcast()
        return self.mjpeg_feed

    def reset_mjpeg(self) -> None:
        """A fresh local broadcast for a (re)started app: its events belong to the event loop now running. A feed
        from elsewhere (the Ray app's front reads the registry's) is kept."""
        if self.mjpeg_feed is None or isinstance(self.mjpeg_feed, MjpegBroadcast):
            self.mjpeg_feed = MjpegBroadcast()
