"""File mode: animate a reference portrait with a driving video into an mp4.

Output frame i corresponds to driving frame i: the warm-up frames the stream emits first are
not written, and the stream is flushed at the end by repeating the last driving frame (the
repeated frames' outputs are dropped), so any frame count works, not only multiples of 4.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalive_trt.filemode.threads import BackgroundWriter, prefetched
from personalive_trt.runtime.animator import SessionOptions
from personalive_trt.runtime.reference_loop import Animator
from personalive_trt.runtime.stream import StreamRuntime


@dataclass(frozen=True, kw_only=True)
class RunOptions(SessionOptions):
    """File mode."""

    output: Path


@dataclass
class RunStats:
    frames: int
    seconds: float
    weights: str
    backend: str

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def chunked(frames: Iterator[np.ndarray], window: int) -> Iterator[tuple[np.ndarray, int]]:
    """Group frames into (window, H, W, 3) chunks; the last one is padded by repeating its
    final frame. Yields (chunk, number of real frames in it)."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == window:
            yield np.stack(batch), window
            batch = []
    if batch:
        real = len(batch)
        batch += [batch[-1]] * (window - real)
        yield np.stack(batch), real


def stream_video(
    animator: Animator | StreamRuntime, frames: Iterator[np.ndarray], emit: Callable[[np.ndarray], None]
) -> int:
    """Run the stream over all ``frames`` and ``emit`` each output frame aligned to its input.

    With a :class:`StreamRuntime` the next chunk is submitted before the previous call's frames are
    collected, so the host prepares and hands out frames while the device computes. ``emit`` gets
    views of the runtime's host ring: it must copy what it keeps. Returns the number of frames
    emitted (= number of driving frames).
    """
    cfg = animator.config
    delay = cfg.steps - 1  # calls between a chunk entering and leaving the pipeline
    pending: deque[int] = deque()  # real-frame counts of chunks still inside the pipeline
    in_flight: deque[int] = deque()  # calls submitted, not yet collected (runtime only)
    pipelined = callable(getattr(animator, "submit", None))
    depth = animator.ring if pipelined else 1
    emitted = 0

    def hand_out(index: int, out: np.ndarray) -> None:
        nonlocal emitted
        if index >= delay:
            keep = pending.popleft()
            for frame in out[:keep]:
                emit(frame)
            emitted += keep

    def collect_one() -> None:
        hand_out(in_flight.popleft(), animator.collect().wait())

    def advance(chunk: np.ndarray) -> None:
        if not pipelined:
            index = animator.count
            hand_out(index, animator.step(chunk))
            return
        if len(in_flight) == depth:
            collect_one()
        in_flight.append(animator.submit(chunk))

    last_chunk = None
    for chunk, real in chunked(frames, cfg.window):
        last_chunk = chunk
        pending.append(real)
        advance(chunk)
    if last_chunk is None:
        raise ValueError("driving video has no frames")
    flush = np.repeat(last_chunk[-1:], cfg.window, axis=0)
    for _ in range(delay):  # the last real chunk leaves the pipeline `delay` calls after it entered
        advance(flush)
    while in_flight:
        collect_one()
    return emitted


def animate_file(options: RunOptions, progress: bool = True) -> RunStats:
    """Animate ``options.reference`` with ``options.driving`` into ``options.output`` (mp4)."""
    from tqdm import tqdm

    from personalive_trt import media
    from personalive_trt.media import sample
    from personalive_trt.media.framing import Framing

    # Everything cheap is validated before any network is loaded.
    animation = options.check()
    output = media.check_output_path(options.output)
    reference_path = sample.resolve_media(options.reference, "reference")
    driving_path = sample.resolve_media(options.driving, "driving")
    resolution = animation.config.resolution
    framing = Framing(resolution, options.crop)
    reference = framing.reference(media.read_image(reference_path), source=reference_path)
    framer = framing.driving()
    media.probe_video(driving_path)
    animator = animation.open()
    animator.fuse_reference(reference)

    with media.VideoReader(driving_path, max_frames=options.max_frames) as reader:
        total = reader.info.frame_count
        if options.max_frames is not None and total is not None:
            total = min(total, options.max_frames)
        start = time.perf_counter()
        with media.VideoWriter(output, fps=reader.info.fps, size=(resolution, resolution),
                               audio_source=driving_path if reader.info.has_audio else None) as writer, \
                tqdm(total=total, unit="frame", desc="animating", disable=not progress) as bar:

            background = BackgroundWriter(writer)

            def emit(frame: np.ndarray) -> None:
                background.write(frame)
                bar.update(1)
                bar.set_postfix(fps=f"{bar.n / max(time.perf_counter() - start, 1e-9):.2f}")

            try:
                emitted = stream_video(animator, prefetched(framer(frame) for frame in reader), emit)
            finally:
                background.close()  # every queued frame is encoded (or its error raised) before the file closes
    return RunStats(frames=emitted, seconds=time.perf_counter() - start, weights=animation.weights,
                    backend=animator.description)
