"""File mode: animate a reference portrait with a driving video into an mp4.

Output frame i corresponds to driving frame i: the warm-up frames the stream emits first are
not written, and the stream is flushed at the end by repeating the last driving frame (the
repeated frames' outputs are dropped), so any frame count works, not only multiples of 4.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from personalive_trt.config import StreamConfig
from personalive_trt.devices import canonical_device, describe, resolve_device
from personalive_trt.engines.networks import Networks
from personalive_trt.runtime.reference_loop import Animator
from personalive_trt.runtime import StreamRuntime
from personalive_trt.models.weights import SYNTHETIC_NOTICE, load_models, parse_weights_spec, validate_weights_folder

DEFAULT_WEIGHTS_DIR = Path("pretrained_weights")
LOOPS = ("runtime", "reference")


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """What file and live mode share: the inputs, the weights and how the networks run."""

    reference: str
    driving: str
    weights: str = "auto"
    max_frames: int | None = None
    seed: int = 42
    device: str = "auto"  # the GPU when there is one (personalive_trt.devices)
    dtype: str = "auto"  # follows the device unless given
    crop: bool = True
    backend: str = "torch"
    engines: Path | None = None
    window: int = 4
    vae: str = "full"  # per-step decoder: "full" or "tiny" (TAESD), see StreamConfig.vae
    compile: str = "off"  # torch.compile: auto (only with a warm cache), on, off (personalive_trt.runtime.compile)


@dataclass(frozen=True, kw_only=True)
class RunOptions(SessionOptions):
    """File mode."""

    output: Path
    loop: str = "runtime"  # "runtime" (StreamRuntime) or "reference" (Animator)


@dataclass
class RunStats:
    frames: int
    seconds: float
    weights: str
    backend: str

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def resolve_weights(spec: str) -> str:
    """``auto``: ./pretrained_weights when it exists, otherwise synthetic small weights."""
    if spec != "auto":
        return spec
    return str(DEFAULT_WEIGHTS_DIR) if DEFAULT_WEIGHTS_DIR.is_dir() else "synthetic"


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


def open_animator(
    weights: str,
    backend: str = "torch",
    engines: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 42,
    config: StreamConfig | None = None,
    loop: str = "runtime",
    compile: str = "off",  # noqa: A002
) -> Animator | StreamRuntime:
    """Load the networks of ``weights`` (a folder or ``synthetic[:size]``) for ``backend`` and
    return a loop ready for ``fuse_reference``: the :class:`StreamRuntime` (``loop="runtime"``,
    CUDA graphs where the backend allows) or the reference :class:`Animator` (``"reference"``).
    ``compile``: ``auto``/``on``/``off``, see :func:`~personalive_trt.runtime.compile.resolve_compile`.
    Prints the synthetic-weights notice."""
    if loop not in LOOPS:
        raise ValueError(f"--loop {loop!r}: expected one of {', '.join(LOOPS)}")
    config = config or StreamConfig()
    device = canonical_device(device)
    print(f"running on {describe(device, dtype)}, {backend} backend", file=sys.stderr)
    kind, location = parse_weights_spec(weights)
    if kind == "synthetic":
        print(SYNTHETIC_NOTICE.format(spec=f"{weights}"), file=sys.stderr)
    else:
        validate_weights_folder(Path(location))
    if backend == "torch":
        networks = Networks.from_models(load_models(weights, device=device, dtype=dtype, vae=config.vae), config)
    else:
        from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR, load_networks

        networks = load_networks(engines or DEFAULT_ENGINES_DIR, backend, weights, config, device, dtype=dtype)
    from personalive_trt.runtime.compile import compile_networks, resolve_compile

    compile_options = resolve_compile(compile, backend, engines, networks if backend == "torch" else None, loop)
    if compile_options is not None:
        networks = compile_networks(networks, compile_options)
        print(f"torch.compile: {networks.compiled.cache_state} cache in {compile_options.folder()}", file=sys.stderr)
    if loop == "reference":
        return Animator(networks, config, seed=seed)
    return StreamRuntime(networks, config, seed=seed)


def animate_file(options: RunOptions, progress: bool = True) -> RunStats:
    """Animate ``options.reference`` with ``options.driving`` into ``options.output`` (mp4)."""
    from tqdm import tqdm

    from personalive_trt import media
    from personalive_trt.media import framing
    from personalive_trt.media import sample

    config = StreamConfig(window=options.window, vae=options.vae)
    if options.backend not in ("torch", "onnxruntime", "tensorrt"):
        raise ValueError(f"--backend {options.backend!r}: expected torch, onnxruntime or tensorrt")
    if options.loop not in LOOPS:
        raise ValueError(f"--loop {options.loop!r}: expected one of {', '.join(LOOPS)}")
    from personalive_trt.runtime.compile import require_compiler, resolve_compile

    resolve_compile(options.compile, options.backend, loop=options.loop)  # bad --compile: one line, before any work
    if options.backend == "tensorrt":
        from personalive_trt.engines import require_tensorrt

        require_tensorrt()  # one line, before any work
    output = media.check_output_path(options.output)
    reference_path = sample.resolve_media(options.reference, "reference")
    driving_path = sample.resolve_media(options.driving, "driving")
    device, dtype = resolve_device(options.device, options.dtype, options.backend)
    if options.compile == "on":
        require_compiler(device)  # Triton on CUDA, a C++ compiler on the CPU: one line, before any work
    weights = resolve_weights(options.weights)
    if options.max_frames is not None and options.max_frames < 1:
        raise ValueError(f"--max-frames {options.max_frames}: expected a positive number of frames")

    # Everything cheap is validated before any network is loaded.
    image = media.read_image(reference_path)
    if options.crop:
        try:
            reference = framing.frame_reference(image, size=config.resolution)
        except framing.NoFaceError as exc:
            raise framing.NoFaceError(f"{reference_path}: {exc} (use --no-crop to skip face framing)") from exc
        framer = framing.DrivingFramer(size=config.resolution)
    else:
        reference = framing.resize_square(image, config.resolution)
        framer = lambda frame: framing.resize_square(frame, config.resolution)  # noqa: E731
    media.probe_video(driving_path)
    animator = open_animator(weights, backend=options.backend, engines=options.engines, device=device,
                             dtype=dtype, seed=options.seed, config=config, loop=options.loop,
                             compile=options.compile)
    animator.fuse_reference(reference)

    with media.VideoReader(driving_path, max_frames=options.max_frames) as reader:
        total = reader.info.frame_count
        if options.max_frames is not None and total is not None:
            total = min(total, options.max_frames)
        start = time.perf_counter()
        with media.VideoWriter(output, fps=reader.info.fps, size=(config.resolution, config.resolution),
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
    return RunStats(frames=emitted, seconds=time.perf_counter() - start, weights=weights,
                    backend=animator.description)
