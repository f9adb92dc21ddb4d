"""``/api/stream.mjpg``: each session's output as MJPEG, for whoever holds that session's key.

A session (one ``start`` until it stops, fails, idles out or its socket closes; a ``swap`` keeps it) opens a
feed under a fresh unguessable key (:func:`secrets.token_urlsafe`, 128 bits) and announces
``/api/stream.mjpg?key=...`` in its ``started`` message. A request without a live session's key is answered
404 (the same whether the key never existed or its session ended, so a guess learns nothing), and a feed's
viewers see its session's frames only. When the session ends its feed ends, and so do its viewers'
responses. At most ``max_viewers`` viewers watch one feed (then 429), so the number of long-lived MJPEG
responses is bounded by the sessions, and each session's outputs are encoded once whatever the viewers.

A viewer holds a lease that every poll for a frame renews; one whose polls stop (its server replica died)
is forgotten after :data:`VIEWER_TTL` s. The single-process server's routes read a :class:`SessionFeeds`
directly; the Ray app's front reads the registry's, whose keys the animator replicas announce (:mod:`.ray_app`).
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable

#: ``next_frame``'s answer once the feed has ended (or never existed): the viewer's response ends.
ENDED = "ended"
#: Longest wait for one frame a client may ask for (``timeout``), seconds.
MAX_POLL = 60.0
#: A viewer that has not polled for this long (over the longest poll) has gone.
VIEWER_TTL = MAX_POLL + 15.0
#: Where a session's MJPEG stream is served (its key in the query).
MJPEG_PATH = "/api/stream.mjpg"


class ViewerRefused(Exception):
    """A viewer that may not watch: ``status`` 404 (no live session has that key) or 429 (its viewers are full)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def multipart_part(jpeg: bytes) -> bytes:
    """One part of a ``multipart/x-mixed-replace; boundary=frame`` MJPEG response."""
    return (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
            + b"\r\n\r\n" + jpeg + b"\r\n")


class MjpegBroadcast:
    """One session's newest output JPEG, and the leases of its viewers."""

    def __init__(self) -> None:
        self.jpeg: bytes | None = None
        self.version = 0
        self.ended = False
        self.changed = asyncio.Event()
        self.viewers: dict[int, float] = {}  # viewer id -> time.monotonic() of its last poll

    def publish(self, jpeg: bytes) -> None:
        self.jpeg = jpeg
        self.version += 1
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()  # readers waiting on the old event wake; new ones wait for the next

    def live_viewers(self, now: float) -> int:
        for viewer in [v for v, seen in self.viewers.items() if now - seen > VIEWER_TTL]:
            del self.viewers[viewer]
        return len(self.viewers)

    async def next_frame(self, version: int, timeout: float):
        """``(version, jpeg)`` newer than ``version``, None after ``timeout`` s without one, or :data:`ENDED`."""
        if not self.ended and (self.version == version or self.jpeg is None):
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        if self.ended:
            return ENDED
        return (self.version, self.jpeg) if self.jpeg is not None and self.version != version else None


class SessionFeeds:
    """The feeds of the live sessions by key, with their viewers (one process: a server, or the Ray registry)."""

    def __init__(self, max_viewers: int) -> None:
        if max_viewers < 1:
            raise ValueError(f"max_viewers must be >= 1, got {max_viewers}")
        self.max_viewers = max_viewers
        # Where the viewers are served by another process (the Ray app's registry): awaited after a feed opens,
        # so that its URL works the moment the session announces it (None: the viewers are served here).
        self.announce: Callable[[], Awaitable[None]] | None = None
        self.feeds: dict[str, MjpegBroadcast] = {}
        self.changed = asyncio.Event()  # set at every open, end and publish (the Ray replica's forward loop)
        self._viewer_ids = itertools.count(1)

    # -------------------------------------------------------------------------------------- the sessions' side
    def open(self, key: str | None = None) -> str:
        """A feed for a new session under ``key`` (default: a fresh unguessable one); returns the key."""
        key = key or secrets.token_urlsafe(16)
        self.feeds.setdefault(key, MjpegBroadcast())
        self._wake()
        return key

    async def open_announced(self) -> str:
        """:meth:`open` a feed for a new session, and :attr:`announce` it before its key is handed out."""
        key = self.open()
        if self.announce is not None:
            await self.announce()
        return key

    def end(self, key: str | None) -> None:
        """The session has ended: its viewers' responses end (no-op for None or an unknown key)."""
        feed = self.feeds.pop(key, None) if key is not None else None
        if feed is not None:
            feed.end()
            self._wake()

    def publish(self, key: str, jpeg: bytes) -> None:
        feed = self.feeds.get(key)
        if feed is not None:
            feed.publish(jpeg)
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def watched(self) -> list[str]:
        """The keys that have viewers now."""
        now = time.monotonic()
        return [key for key, feed in self.feeds.items() if feed.live_viewers(now)]

    # -------------------------------------------------------------------------------------- the viewers' side
    def watch(self, key: str) -> int:
        """A viewer id for the feed of ``key``; raises :class:`ViewerRefused` (404, 429)."""
        feed = self.feeds.get(key)
        if feed is None:
            raise ViewerRefused(404, "no live session has this key (it ended, or never was)")
        now = time.monotonic()
        if feed.live_viewers(now) >= self.max_viewers:
            raise ViewerRefused(429, f"this session already has {self.max_viewers} MJPEG viewer(s); try again later")
        viewer = next(self._viewer_ids)
        feed.viewers[viewer] = now
        return viewer

    def unwatch(self, key: str, viewer: int) -> None:
        feed = self.feeds.get(key)
        if feed is not None:
            feed.viewers.pop(viewer, None)

    async def next_frame(self, key: str, viewer: int, version: int, timeout: float):
        """What :meth:`MjpegBroadcast.next_frame` answers, renewing the viewer's lease before and after."""
        feed = self.feeds.get(key)
        if feed is None or viewer not in feed.viewers:  # ended, or the lease ran out
            return ENDED
        feed.viewers[viewer] = time.monotonic()
        frame = await feed.next_frame(version, min(timeout, MAX_POLL))
        if viewer in feed.viewers:
            feed.viewers[viewer] = time.monotonic()
        return frame

    async def open_viewer(self, key: str) -> "Viewer":
        viewer = self.watch(key)
        return Viewer(lambda version, timeout: self.next_frame(key, viewer, version, timeout),
                      lambda: self._unwatch_async(key, viewer))

    async def _unwatch_async(self, key: str, viewer: int) -> None:
        self.unwatch(key, viewer)


class Viewer:
    """One admitted viewer: its frames as multipart parts, its slot given back when the response ends."""

    def __init__(self, next_frame: Callable[[int, float], Awaitable], close: Callable[[], Awaitable[None]]) -> None:
        self.next_frame = next_frame
        self._close = close
        self.closed = False

    async def close(self) -> None:
        """Give the slot back (once; the generator's end and the response's end both call it)."""
        if not self.closed:
            self.closed = True
            await self._close()

    async def frames(self, max_frames: int | None, timeout: float):
        """Parts until the session ends; with ``max_frames``, also after that many or ``timeout`` s without one."""
        sent, version = 0, -1
        try:
            while max_frames is None or sent < max_frames:
                newer = await self.next_frame(version, timeout)
                if newer == ENDED:
                    return
                if newer is None:
                    if max_frames is not None:
                        return
                    continue
                version, jpeg = newer
                yield multipart_part(jpeg)
                sent += 1
        finally:
            await self.close()
