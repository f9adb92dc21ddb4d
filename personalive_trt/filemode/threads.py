"""The two threads around file mode's loop: decoding and face framing ahead of it, encoding behind it.

Both are bounded (a slow encoder holds the loop back instead of growing a queue), deliver every item in order, and
hand an exception of their thread to the caller.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np


def prefetched(items: Iterator, depth: int = 8) -> Iterator:
    """Iterate ``items`` on a background thread, ``depth`` ahead (decoding and face framing run beside
    the animation). Every item is delivered, in order; an exception in the producer is re-raised here.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put((done, exc))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class BackgroundWriter:
    """Feeds a writer (``write(frame)``) from a bounded queue on its own thread, so encoding runs
    beside the animation. ``write`` copies the frame (callers may reuse their buffers); the first
    error of the writer thread is re-raised by the next ``write`` or by ``close``."""

    def __init__(self, writer, depth: int = 32) -> None:
        self.writer = writer
        self.frames: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="writer", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            frame = self.frames.get()
            if frame is None:
                return
            if self.error is None:
                try:
                    self.writer.write(frame)
                except BaseException as exc:  # re-raised on the caller's thread
                    self.error = exc

    def write(self, frame: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.frames.put(np.array(frame, copy=True))

    def close(self) -> None:
        self.frames.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
