"""What one server process shares between its routes and its WebSocket sessions: settings, the animator pool,
the reference store, the counters and the MJPEG broadcast. Routes and sessions read it from
``app.state.server``, so any FastAPI app that sets it (see :func:`personalive_trt.web.routes.mount`) serves the
same API."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from personalive_trt.web.pool import EnginePool
from personalive_trt.web.references import ReferenceStore
from personalive_trt.web.settings import ServeSettings

COUNTERS = ("sessions", "connections", "busy_refusals", "refused_connections", "oversize_messages", "bad_messages")


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

    async def frames(self, max_frames: int | None, timeout: float):
        sent, version = 0, -1
        while max_frames is None or sent < max_frames:
            if self.version == version or self.jpeg is None:
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout)
                except asyncio.TimeoutError:
                    if max_frames is not None:
                        return
                    continue
            version, jpeg = self.version, self.jpeg
            yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                   + b"\r\n\r\n" + jpeg + b"\r\n")
            sent += 1


@dataclass
class ServerState:
    settings: ServeSettings
    pool: EnginePool
    references: ReferenceStore
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    _mjpeg: MjpegBroadcast | None = None

    @property
    def resolution(self) -> int:
        return self.pool.engines[0].resolution

    @property
    def mjpeg(self) -> MjpegBroadcast:
        if self._mjpeg is None:  # apps driven without their lifespan (plain TestClient calls)
            self._mjpeg = MjpegBroadcast()
        return self._mjpeg

    def reset_mjpeg(self) -> None:
        """A fresh broadcast for a (re)started app: its events belong to the event loop now running."""
        self._mjpeg = MjpegBroadcast()
