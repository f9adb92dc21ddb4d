"""The animator pool: ``max_sessions`` animators, each on its own worker thread, leased to one session at a time.

Animators are created once, when the server starts (a bad weights folder fails ``serve`` at start, not at the
first click), and never per session: loading networks and capturing CUDA graphs takes seconds and device
memory. A session leases an :class:`AnimatorSlot` for as long as it animates; ``busy`` is the pool being empty.

An animator that failed (:attr:`~personalive_trt.live.worker.AnimationWorker.animator_failure`) is the pool's
liveness: :attr:`AnimatorPool.failures` lists them. The single-process ``serve`` leases a failed animator again
(its next start resets it; a passing failure costs one session), the Ray app does not (``reuse_failed=False``):
its replica fails Ray's health check instead and Ray replaces it (:mod:`.ray_app`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from personalive_trt.live.worker import AnimationWorker, OutputFrame
from personalive_trt.web.frames import encode_jpeg
from personalive_trt.web.settings import ServeSettings

log = logging.getLogger("personalive_trt.web")


class Lessee(Protocol):
    """What the pool needs of a session (:class:`~personalive_trt.web.session.Session`): its event loop, where its
    outputs and failure are handed over, and the slot it holds (set by :meth:`AnimatorPool.acquire`)."""

    loop: asyncio.AbstractEventLoop
    slot: "AnimatorSlot | None"

    def deliver(self, item: tuple[bytes, OutputFrame]) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


class AnimatorSlot:
    """An animator and its worker thread, leased to one session at a time."""

    def __init__(self, animator, quality: int, max_malformed_in_a_row: int) -> None:
        self.animator = animator
        self.resolution = animator.config.resolution
        self.quality = quality
        self.session: Lessee | None = None
        self.worker = AnimationWorker(animator, emit=self._emit, on_error=self._error, name="animation-worker",
                                      max_malformed_in_a_row=max_malformed_in_a_row)

    def _emit(self, frame: OutputFrame) -> None:  # worker thread
        session = self.session
        if session is None or frame.tag is not session:
            return  # the tail of a stream that has been stopped (possibly another client's)
        jpeg = encode_jpeg(frame.image, self.quality)
        frame.image = None  # the JPEG is all that travels on; do not keep the array alive
        session.loop.call_soon_threadsafe(session.deliver, (jpeg, frame))

    def _error(self, exc: BaseException) -> None:  # worker thread
        session = self.session
        if session is not None:
            session.loop.call_soon_threadsafe(session.fail, exc)


class AnimatorPool:
    """``max_sessions`` animator slots; a session acquires one for as long as it animates."""

    def __init__(self, slots: list[AnimatorSlot], reuse_failed: bool = True) -> None:
        self.slots = slots
        self.reuse_failed = reuse_failed  # lease a slot whose animator failed (module docstring)

    @classmethod
    def create(cls, animator_factory, settings: ServeSettings, reuse_failed: bool = True) -> "AnimatorPool":
        """``settings.max_sessions`` slots from ``animator_factory()`` (called that many times, now)."""
        if settings.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {settings.max_sessions}")
        return cls([AnimatorSlot(animator_factory(), settings.output_quality, settings.max_malformed_in_a_row)
                    for _ in range(settings.max_sessions)], reuse_failed=reuse_failed)

    @property
    def failures(self) -> list[str]:
        """``"Type: message"`` of each animator that failed and has not restarted since (empty: all alive)."""
        return [f"{type(s.worker.animator_failure).__name__}: {s.worker.animator_failure}" for s in self.slots
                if s.worker.animator_failure is not None]

    @property
    def active(self) -> int:
        return sum(s.session is not None for s in self.slots)

    @property
    def animator(self):
        """The first animator: every slot runs the same configuration (resolution, window, description)."""
        return self.slots[0].animator

    def acquire(self, session: Lessee) -> AnimatorSlot | None:
        for slot in self.slots:
            if slot.session is None and (self.reuse_failed or slot.worker.animator_failure is None):
                slot.session = session
                session.slot = slot
                return slot
        return None

    def release(self, session: Lessee) -> None:
        slot = session.slot
        if slot is not None and slot.session is session:
            slot.worker.stop()
            slot.session = None
        session.slot = None

    def close(self) -> None:
        """End every worker thread, waiting for running steps (all asked first, so they finish together)."""
        for slot in self.slots:
            slot.worker.request_close()
        for slot in self.slots:
            if not slot.worker.close():
                log.warning("an animation worker did not finish its step in time")
