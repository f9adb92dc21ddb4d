"""The animator pool: ``max_sessions`` animators, each on its own worker thread, leased to one session at a time.

Animators are created once, when the server starts (a bad weights folder fails ``serve`` at start, not at the
first click), and never per session: loading networks and capturing CUDA graphs takes seconds and device
memory. A session leases an :class:`Engine` for as long as it animates; ``busy`` is the pool being empty.

An animator that failed (:attr:`~personalive_trt.live.worker.AnimationWorker.animator_failure`) is the pool's
liveness: :attr:`EnginePool.failures` lists them. The single-process ``serve`` leases a failed animator again
(its next start resets it; a passing failure costs one session), the Ray app does not (``reuse_failed=False``):
its replica fails Ray's health check instead and Ray replaces it (:mod:`.ray_app`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from personalive_trt.live.worker import AnimationWorker, OutputFrame
from personalive_trt.web.frames import encode_jpeg
from personalive_trt.web.settings import ServeSettings

if TYPE_CHECKING:
    from personalive_trt.web.session import Session

log = logging.getLogger("personalive_trt.web")


class Engine:
    """An animator and its worker thread, leased to one session at a time."""

    def __init__(self, animator, quality: int, max_malformed_in_a_row: int) -> None:
        self.animator = animator
        self.resolution = animator.config.resolution
        self.quality = quality
        self.session: Session | None = None
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


class EnginePool:
    def __init__(self, engines: list[Engine], reuse_failed: bool = True) -> None:
        self.engines = engines
        self.reuse_failed = reuse_failed  # lease an engine whose animator failed (module docstring)

    @classmethod
    def create(cls, animator_factory, settings: ServeSettings, reuse_failed: bool = True) -> "EnginePool":
        """``settings.max_sessions`` engines from ``animator_factory()`` (called that many times, now)."""
        if settings.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {settings.max_sessions}")
        return cls([Engine(animator_factory(), settings.output_quality, settings.max_malformed_in_a_row)
                    for _ in range(settings.max_sessions)], reuse_failed=reuse_failed)

    @property
    def failures(self) -> list[str]:
        """``"Type: message"`` of each animator that failed and has not restarted since (empty: all alive)."""
        return [f"{type(e.worker.animator_failure).__name__}: {e.worker.animator_failure}" for e in self.engines
                if e.worker.animator_failure is not None]

    @property
    def active(self) -> int:
        return sum(e.session is not None for e in self.engines)

    @property
    def animator(self):
        """The first animator: every engine runs the same configuration (resolution, window, description)."""
        return self.engines[0].animator

    def acquire(self, session: Session) -> Engine | None:
        for engine in self.engines:
            if engine.session is None and (self.reuse_failed or engine.worker.animator_failure is None):
                engine.session = session
                session.engine = engine
                return engine
        return None

    def release(self, session: Session) -> None:
        engine = session.engine
        if engine is not None and engine.session is session:
            engine.worker.stop()
            engine.session = None
        session.engine = None

    def close(self) -> None:
        """End every worker thread, waiting for running steps (all asked first, so they finish together)."""
        for engine in self.engines:
            engine.worker.request_close()
        for engine in self.engines:
            if not engine.worker.close():
                log.warning("an animation worker did not finish its step in time")
