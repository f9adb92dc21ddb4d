"""One measured streaming session (fusion, first frame, keyframes reached, timed calls) and its inputs."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from personalive_trt.bench.options import BenchError
from personalive_trt.bench.timing import Clock, StageProbe



def sample_frames(resolution: int | None):
    """The built-in sample portrait and every frame of the sample driving clip, resized to ``resolution``
    (``None``: as stored, the offline mode's inputs).

    The clip is decoded with OpenCV's bundled FFmpeg, not PyAV: the benchmark and the GPU check run where
    PyAV is not installed (the device machine has OpenCV and no PyAV). On the sample both decoders give the
    same pixels (checked in tests/test_imports.py).
    """
    import cv2
    import numpy as np

    from personalive_trt import media
    from personalive_trt.media import framing
    from personalive_trt.media import sample

    def sized(image):
        return image if resolution is None else framing.resize_square(image, resolution)

    reference = sized(media.read_image(sample.sample_reference()))
    path = sample.sample_driving()
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BenchError(f"{path}: OpenCV cannot open the built-in driving sample")
    frames = []
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(sized(np.ascontiguousarray(bgr[:, :, ::-1])))
    finally:
        capture.release()
    if not frames:
        raise BenchError(f"{path}: OpenCV decoded no frames from the built-in driving sample")
    return reference, frames


def sample_inputs(resolution: int, window: int):
    """The sample portrait and the sample driving clip cut into chunks (the session loops over them)."""
    import numpy as np

    reference, frames = sample_frames(resolution)
    needed = max(len(frames) // window, 1) * window
    frames = [frames[i % len(frames)] for i in range(needed)]
    return reference, [np.stack(frames[i:i + window]) for i in range(0, needed, window)]


@dataclass
class Session:
    """What one streaming session measured (times in ms)."""

    fusion_ms: float = 0.0
    first_frame_ms: float = 0.0
    step_ms: list[float] = field(default_factory=list)
    host_staging_ms: list[float] = field(default_factory=list)  # runtime only: submit's host part, before its work
    chunk_latency_ms: list[float] = field(default_factory=list)
    keyframes: int = 0
    fps: float | None = None


class WorkStart:
    """Marks where a :meth:`StreamRuntime.submit` call's device work begins, after its host staging.

    ``submit`` first checks the frames, waits for the ring slot and copies the frames into pinned memory
    (``np.copyto``), then enqueues its work inside ``runtime._on_stream()``. An event recorded before ``submit``
    would count that host staging as device time (the stream idles meanwhile), so the step's start mark is
    recorded on entering that context instead: ``step_ms`` is the device time of the call's work (input copy,
    networks, output copy), ``host_staging_ms`` the host time before it. Wraps the method on the instance only
    (the runtime has no public hook); a runtime without it is an error, not a silently different clock.
    """

    def __init__(self, runtime, clock: Clock) -> None:
        if not callable(getattr(runtime, "_on_stream", None)):
            raise BenchError(f"{type(runtime).__name__} has no _on_stream(): the benchmark cannot mark where a "
                             "call's device work starts")
        self.runtime, self.clock = runtime, clock
        self.marks: list[tuple[float, object]] = []  # (perf_counter, clock mark) per entry into the stream

    def __enter__(self) -> "WorkStart":
        original = self.runtime._on_stream

        @contextlib.contextmanager
        def marked():
            with original():
                self.marks.append((time.perf_counter(), self.clock.mark(self.runtime.stream)))
                yield

        self.runtime._on_stream = marked  # instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        vars(self.runtime).pop("_on_stream", None)


def _keyframes_of(engine) -> int:
    return engine.keyframes if hasattr(engine, "keyframes") else len(engine.keyframe_banks)


def fuse_timed(engine, reference, clock: Clock) -> float:
    engine.reset()
    start = time.perf_counter()
    engine.fuse_reference(reference)
    clock.sync()
    return (time.perf_counter() - start) * 1e3


def run_session(engine, reference, chunks: list, keyframes: int, calls: int, clock: Clock,
                probe: StageProbe | None = None, count_flops: bool = False, pipelined: bool = False) -> Session:
    """Fuse ``reference``, reach ``keyframes`` keyframes (+ one call of the measured kind), measure ``calls``.

    ``engine``: a StreamRuntime (timed with events on its stream) or an Animator (synchronous; host clock).
    """
    runtime = hasattr(engine, "submit")
    session = Session()
    start = time.perf_counter()
    session.fusion_ms = fuse_timed(engine, reference, clock)
    engine.step(chunks[0])
    clock.sync()
    session.first_frame_ms = (time.perf_counter() - start) * 1e3
    index = 1
    while _keyframes_of(engine) < keyframes:
        if index > keyframes + 2:
            raise RuntimeError(f"bench: {keyframes} keyframes not reached after {index} calls")
        engine.step(chunks[index % len(chunks)])
        index += 1
    last_warm = chunks[index % len(chunks)]
    if count_flops and probe is not None:
        probe.count_flops(lambda: engine.step(last_warm))
    else:
        engine.step(last_warm)
    index += 1
    clock.sync()
    session.keyframes = _keyframes_of(engine)
    stream = getattr(engine, "stream", None)
    starts = WorkStart(engine, clock) if runtime else contextlib.nullcontext()
    with starts:
        for _ in range(calls):
            chunk = chunks[index % len(chunks)]
            index += 1
            if probe is not None:
                probe.begin_call()
            wall = time.perf_counter()
            if runtime:
                first_mark = len(starts.marks)
                engine.submit(chunk)
                end = clock.mark(stream)
                staged_at, begin = starts.marks[first_mark]  # the first entry of this submit
                session.host_staging_ms.append((staged_at - wall) * 1e3)
                engine.collect().wait()
            else:
                begin = clock.mark(stream)
                engine.step(chunk)
                end = clock.mark(stream)
            session.chunk_latency_ms.append((time.perf_counter() - wall) * 1e3)
            session.step_ms.append(clock.ms(begin, end))
            if probe is not None:
                probe.end_call()
    if _keyframes_of(engine) != keyframes:
        raise RuntimeError(f"bench: {_keyframes_of(engine)} keyframes in effect, expected {keyframes}")
    if pipelined:
        # Back-to-back submissions, ``ring`` calls in flight: the sustained throughput.
        wall = time.perf_counter()
        in_flight = 0
        for _ in range(calls):
            if in_flight == engine.ring:
                engine.collect().wait()
                in_flight -= 1
            engine.submit(chunks[index % len(chunks)])
            index += 1
            in_flight += 1
        for _ in range(in_flight):
            engine.collect().wait()
        session.fps = calls * engine.config.window / (time.perf_counter() - wall)
    return session
