"""``personalive-trt run`` in live mode: a source, the animation worker and the sinks, until Ctrl-C.

Threads: the source's capture thread puts the newest frame in the worker's inbox (stale ones are dropped
and counted); the worker animates windows of frames and puts the results in a small ring; the calling
thread plays them out to the sinks, spaced like the driving frames were captured (the animator returns
``window`` frames at once), and owns the sinks, so Ctrl-C lands there and finalises the output file.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from personalive_trt.live.slots import FrameRing, PlayoutClock
from personalive_trt.live.worker import AnimationWorker, OutputFrame, percentile
from personalive_trt.runtime.animator import SessionOptions

log = logging.getLogger("personalive_trt.live")


@dataclass(frozen=True, kw_only=True)
class LiveOptions(SessionOptions):
    """Live mode (``max_frames``: stop after that many output frames)."""

    output: Path | None = None
    preview: bool = False
    virtual_camera: bool = False
    fps: float | None = None  # requested camera rate / file playback rate (default: the source's own)
    loop: bool = False  # replay a file source until stopped

    def check(self):
        """The session's validate-first step (:meth:`SessionOptions.check`), then what only live mode has."""
        if not (self.output or self.preview or self.virtual_camera):
            raise ValueError("live mode needs at least one sink: --output FILE.mp4, --preview or --virtual-camera")
        if self.fps is not None and not 0 < self.fps <= 240:
            raise ValueError(f"--fps {self.fps}: expected a rate in (0, 240]")
        return super().check()


@dataclass
class LiveStats:
    frames: int = 0  # frames shown/written
    seconds: float = 0.0
    captured: int = 0
    dropped_input: int = 0  # captured but never animated (latest-frame-wins)
    dropped_output: int = 0  # animated but evicted before play-out (sinks too slow)
    malformed: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))  # recent, seconds
    stopped_by: str = "end of source"
    backend: str = ""
    weights: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lat = sorted(self.latencies)
        latency = (f", latency p50 {1000 * percentile(lat, 50):.0f} ms p95 {1000 * percentile(lat, 95):.0f} ms"
                   if lat else "")
        return (f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.2f} fps){latency}; captured "
                f"{self.captured}, dropped {self.dropped_input} stale input frames, {self.dropped_output} output "
                f"frames, {self.malformed} malformed; stopped by {self.stopped_by}")


def is_live_request(driving: str, preview: bool, virtual_camera: bool) -> bool:
    """Live mode when the source is live (camera, device, URL) or a live sink is asked for."""
    from personalive_trt.live.sources import parse_source

    if preview or virtual_camera:
        return True
    try:
        return parse_source(driving).is_live
    except (ValueError, FileNotFoundError):
        return False  # let file mode report a bad path as it always has


def run_live(options: LiveOptions, status: Callable[[str], None] | None = None,
             _animator=None) -> LiveStats:
    """Run until the source ends, ``max_frames`` frames are out, a sink asks to stop, or Ctrl-C/SIGTERM.

    ``_animator`` (tests) replaces the loaded animator; it must have the animator interface.
    """
    from personalive_trt.live.sources import SourceError

    status = status or (lambda message: print(message, file=sys.stderr))
    animation = options.check()
    config = _animator.config if _animator is not None else animation.config
    reference, framer, source, sinks, animator = _open(options, animation, config.resolution, status, _animator)

    ring: FrameRing[OutputFrame] = FrameRing(capacity=2 * config.window)
    errors: list[BaseException] = []
    worker = AnimationWorker(animator, emit=ring.put, on_error=lambda exc: (errors.append(exc), ring.close()))
    source.slot = worker.inbox  # the capture thread feeds the worker directly, newest frame wins
    stats = LiveStats(backend=getattr(animator, "description", ""), weights=animation.weights)
    start = time.monotonic()
    finished = False
    stop = _StopRequest()
    try:
        stop.install()
        worker.start(reference, framer)
        # The portrait's fusion (seconds on a slow device) ends before the source starts: a paced file would
        # lose its first frames to it (dropped as stale), and camera frames captured meanwhile are stale anyway.
        while not worker.wait_idle(0.1) and not stop.event.is_set():
            pass
        source.start()
        status(f"live: {options.driving} at {source.fps:g} fps -> "
               f"{', '.join(s.name for s in sinks)} ({stats.backend}); Ctrl-C stops")
        stats.stopped_by = _play_out(ring, worker, source, sinks, stats, options.max_frames, errors, stop)
        finished = True
    except (KeyboardInterrupt, SystemExit):  # where no handler could be installed (not the main thread)
        stats.stopped_by = "Ctrl-C" if sys.exc_info()[0] is KeyboardInterrupt else "SIGTERM"
        finished = True  # a requested stop keeps (finalises) the output
    finally:
        stop.restore()
        source.close()
        worker.close()
        stats.seconds = time.monotonic() - start
        stats.captured = source.captured
        stats.dropped_input = worker.inbox.dropped
        stats.dropped_output = ring.dropped
        stats.malformed = worker.stats.malformed
        for sink in sinks:
            if finished and not errors and stats.frames > 0:
                sink.close()
            else:
                sink.abort()  # nothing shown (or a failure): no empty or partial file
    if errors:
        raise errors[0]
    if source.error:
        # A camera or stream lost mid-run is a failure (non-zero exit), not an end: what was shown before it
        # is kept (the file was finalised above) and the message says so.
        kept = (f"; the {stats.frames} frames before it were written to {options.output}"
                if options.output is not None and stats.frames else "")
        raise SourceError(f"{source.error}{kept}")
    return stats


def _open(options: LiveOptions, animation, resolution: int, status: Callable[[str], None], animator=None):
    """The framed reference, a framer for the driving frames, the source, the sinks and the animator, cheap
    checks first and the model last; whatever was opened is closed again when a later step fails."""
    from personalive_trt import media
    from personalive_trt.live.sinks import FileSink, PreviewSink, VirtualCameraSink
    from personalive_trt.live.sources import open_source
    from personalive_trt.media import sample
    from personalive_trt.media.framing import Framing

    if options.output is not None:
        media.check_output_path(options.output)
    reference_path = sample.resolve_media(options.reference, "reference")
    framing = Framing(resolution, options.crop)
    reference = framing.reference(media.read_image(reference_path), source=reference_path)
    source = open_source(options.driving, fps=options.fps, loop=options.loop)
    sinks: list = []
    try:
        if options.preview:
            sinks.append(PreviewSink())
        if options.virtual_camera:
            sinks.append(VirtualCameraSink(resolution, source.fps))
            status(f"virtual camera: {sinks[-1].device}")
        if options.output is not None:
            sinks.append(FileSink(options.output, source.fps, resolution))
        if animator is None:
            animator = animation.open()
    except BaseException:
        source.close()
        for sink in sinks:
            sink.abort()
        raise
    return reference, framing.driving(), source, sinks, animator


class _StopRequest:
    """Ctrl-C and SIGTERM as a flag the play-out loop reads, not an exception raised wherever the main thread is.

    An asynchronous KeyboardInterrupt can land inside a ``with lock:`` of the frame ring or the worker (CPython's
    with-statement is not signal-safe), leaving the lock held and the clean-up's ``worker.close()`` waiting
    forever: a stop under load hung that way. Handlers are installed only in the main thread (elsewhere the
    signals stay exceptions, caught by :func:`run_live`) and restored afterwards."""

    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.reason = self.reason or self.SIGNALS[signum]
        self.event.set()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _play_out(ring, worker, source, sinks, stats: LiveStats, max_frames: int | None,
              errors: list[BaseException], stop: _StopRequest) -> str:
    """Show frames spaced as they were captured; returns why it stopped."""
    clock = PlayoutClock()
    while True:
        if stop.event.is_set():
            return stop.reason
        frame = ring.get(timeout=0.1)
        if errors:
            return "error"
        if frame is None:
            # Idle: the source has ended and the worker has nothing more it can complete.
            if source.ended.is_set() and _worker_drained(worker):
                return f"end of source{f' ({source.error})' if source.error else ''}"
            continue
        wait = clock.wait(frame.t_capture, time.monotonic(), frame.t_out)
        if wait > 0 and stop.event.wait(wait):
            return stop.reason
        shown = time.monotonic()
        stats.latencies.append(shown - frame.t_capture)
        snapshot = worker.stats.snapshot()
        hud = (f"{snapshot['fps']:.1f} fps  step {snapshot['step_ms'] or 0:.0f} ms  "
               f"latency {1000 * (shown - frame.t_capture):.0f} ms  dropped {worker.inbox.dropped}")
        for sink in sinks:
            if not sink.write(frame.image, hud):
                stats.frames += 1
                return f"{sink.name} window closed"
        stats.frames += 1
        if max_frames is not None and stats.frames >= max_frames:
            return f"--max-frames {max_frames}"


def _worker_drained(worker: AnimationWorker) -> bool:
    """No frame can come out any more: the inbox is closed and empty, no step is running, and none has ended in
    the last half second (a step's frames reach the ring right after it ends; a partial window never completes)."""
    return (worker.inbox.closed and not worker.inbox.pending and not worker.stepping
            and time.monotonic() - worker.last_step_end > 0.5)
