"""One measured streaming session (fusion, first frame, keyframes reached, timed calls) and its inputs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from personalive_trt.bench.options import BenchError
from personalive_trt.bench.timing import Clock, StageProbe



def sample_frames(resolution: int):
    """The built-in sample portrait and every frame of the sample driving clip, resized to ``resolution``.

    The clip is decoded with OpenCV's bundled FFmpeg, not PyAV: the benchmark and the GPU check run where
    PyAV is not installed (the device machine has OpenCV and no PyAV). On the sample both decoders give the
    same pixels (checked in tests/test_imports.py).
    """
    import cv2
    import numpy as np

    from personalive_trt import framing, media, sample

    reference = framing.resize_square(media.read_image(sample.sample_reference()), resolution)
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
            frames.append(framing.resize_square(np.ascontiguousarray(bgr[:, :, ::-1]), resolution))
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
    chunk_latency_ms: list[float] = field(default_factory=list)
    keyframes: int = 0
    fps: float | None = None


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
    for _ in range(calls):
        chunk = chunks[index % len(chunks)]
        index += 1
        if probe is not None:
            probe.begin_call()
        begin = clock.mark(stream)
        wall = time.perf_counter()
        if runtime:
            engine.submit(chunk)
            end = clock.mark(stream)
            engine.collect().wait()
        else:
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
