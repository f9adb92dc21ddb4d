"""Thread hand-over points that never build up a backlog.

A live stream must show the newest frame, not work through a queue of old ones: the original online app's
unbounded ``multiprocessing.Queue`` let latency grow without bound whenever generation was slower than the
camera. Here a producer that outpaces its consumer overwrites (``LatestSlot``) or evicts the oldest item
(``FrameRing``), and every discarded item is counted, so drops are visible instead of turning into latency.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


def _wait_until(cond: threading.Condition, ready, timeout: float | None) -> None:
    """Wait (holding ``cond``) until ``ready()`` or ``timeout`` seconds pass (``None``: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not ready():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        cond.wait(remaining)


class LatestSlot(Generic[T]):
    """One item; ``put`` replaces an item nobody took yet (counted in ``dropped``).

    ``get`` blocks until an item arrives, the timeout passes (``None``) or the slot is closed (``None``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self.closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; returns False (and stores nothing) once closed."""
        with self._cond:
            if self.closed:
                return False
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self.put_count += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        with self._cond:
            _wait_until(self._cond, lambda: self._full or self.closed, timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    @property
    def pending(self) -> bool:
        """True while an item waits to be taken."""
        with self._cond:
            return self._full

    def clear(self) -> None:
        """Forget a waiting item without counting it as dropped (on stop: nobody wants it any more)."""
        with self._cond:
            self._item, self._full = None, False

    def discard(self) -> bool:
        """Drop a waiting item that went stale, counted in ``dropped``; returns whether there was one."""
        with self._cond:
            if not self._full:
                return False
            self._item, self._full = None, False
            self.dropped += 1
            return True

    def close(self) -> None:
        """Wake every waiter; later ``put`` calls are ignored."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class FrameRing(Generic[T]):
    """Up to ``capacity`` items in order; a ``put`` on a full ring evicts the oldest (counted in ``dropped``).

    Used for output frames, which leave the animator ``window`` at a time and are played out one by one.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._cond = threading.Condition()
        self._items: deque[T] = deque()
        self.capacity = capacity
        self.closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        with self._cond:
            if self.closed:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        with self._cond:
            _wait_until(self._cond, lambda: bool(self._items) or self.closed, timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class PlayoutClock:
    """When to show each output frame so that frames are spaced like their driving frames were captured.

    The animator returns ``window`` frames at once; showing them at once would stutter. Every frame is held to
    one latency, the *offset* (show time minus capture time), so frames keep their capture spacing and nothing
    drifts (spacing each frame from the previous one's actual show time accumulates send overheads and builds
    up a backlog). The offset starts at the first frame's latency. A frame more than ``max_lag`` late, or a
    jump (pause, swapped stream: a frame due more than ``max_wait`` ahead), re-anchors the offset on that
    frame, which is shown at once. When frames arrive earlier again the offset comes back down, to the largest
    latency of the last ``horizon`` seconds (the first frame of each window needs that much), by at most
    ``catch_up`` seconds per second of capture (those frames play that much faster, so it is smooth). Without the way
    down, one late window early in a session held every later frame to its latency for the whole session.
    """

    def __init__(self, max_lag: float = 0.25, max_wait: float = 1.0, horizon: float = 2.0,
                 catch_up: float = 0.1) -> None:
        self.max_lag = max_lag
        self.max_wait = max_wait
        self.horizon = horizon
        self.catch_up = catch_up
        self._offset: float | None = None
        self._last = 0.0  # capture time of the previous frame
        self._recent: deque[tuple[float, float]] = deque()  # (ready, latency when ready) of recent frames

    @property
    def offset(self) -> float | None:
        """The latency frames are held to now (seconds), None before the first frame."""
        return self._offset

    def reset(self) -> None:
        self._offset = None
        self._recent.clear()

    def wait(self, t_capture: float, now: float, t_ready: float | None = None) -> float:
        """Seconds to wait before showing the frame captured at ``t_capture`` (0 = now). ``t_ready``: when the
        frame became available (default ``now``); the time it then waited behind frames being held is the
        clock's own doing, so it does not count towards the latency frames need."""
        latency = now - t_capture
        ready = now if t_ready is None else t_ready
        recent = self._recent
        recent.append((ready, ready - t_capture))
        while recent[0][0] < ready - self.horizon:
            recent.popleft()
        if self._offset is None or not -self.max_lag <= self._offset - latency <= self.max_wait:
            self._offset, self._last = latency, t_capture  # anchor, or re-anchor on a late frame or a jump
            return 0.0
        needed = max(seen for _, seen in recent)
        if needed < self._offset:
            self._offset = max(needed, self._offset - self.catch_up * max(t_capture - self._last, 0.0))
        self._last = t_capture
        return max(self._offset - latency, 0.0)
