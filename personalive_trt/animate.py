"""File mode: animate a reference portrait with a driving video into an mp4.

Output frame i corresponds to driving frame i: the warm-up frames the stream emits first are
not written, and the stream is flushed at the end by repeating the last driving frame (the
repeated frames' outputs are dropped), so any frame count works, not only multiples of 4.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from personalive_trt.config import StreamConfig
from personalive_trt.networks import Networks
from personalive_trt.pipeline import Animator
from personalive_trt.weights import SYNTHETIC_NOTICE, load_models, parse_weights_spec, validate_weights_folder

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
DEFAULT_WEIGHTS_DIR = Path("pretrained_weights")


@dataclass(frozen=True)
class RunOptions:
    reference: str
    driving: str
    output: Path
    weights: str = "auto"
    max_frames: int | None = None
    seed: int = 42
    device: str = "cpu"
    dtype: str = "fp32"
    crop: bool = True
    backend: str = "torch"
    engines: Path | None = None
    window: int = 4


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


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
    if dtype == "fp16" and device == "cpu":
        raise ValueError("--dtype fp16 needs --device cuda (fp16 on CPU is unsupported for these networks)")
    return torch.device(device), DTYPES[dtype]


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
    animator: Animator, frames: Iterator[np.ndarray], emit: Callable[[np.ndarray], None]
) -> int:
    """Run the stream over all ``frames`` and ``emit`` each output frame aligned to its input.

    Returns the number of frames emitted (= number of driving frames).
    """
    cfg = animator.config
    delay = cfg.steps - 1  # calls between a chunk entering and leaving the pipeline
    pending: list[int] = []  # real-frame counts of chunks still inside the pipeline
    emitted = 0

    def advance(chunk: np.ndarray) -> None:
        nonlocal emitted
        out = animator.step(chunk)
        if animator.count > delay:
            keep = pending.pop(0)
            for frame in out[:keep]:
                emit(frame)
            emitted += keep

    last_chunk = None
    for chunk, real in chunked(frames, cfg.window):
        last_chunk = chunk
        pending.append(real)
        advance(chunk)
    if last_chunk is None:
        raise ValueError("driving video has no frames")
    flush = np.repeat(last_chunk[-1:], cfg.window, axis=0)
    while pending:
        advance(flush)
    return emitted


def animate_file(options: RunOptions, progress: bool = True) -> RunStats:
    """Animate ``options.reference`` with ``options.driving`` into ``options.output`` (mp4)."""
    from tqdm import tqdm

    from personalive_trt import framing, media, sample

    config = StreamConfig(window=options.window)
    if options.backend not in ("torch", "onnxruntime", "tensorrt"):
        raise ValueError(f"--backend {options.backend!r}: expected torch, onnxruntime or tensorrt")
    if options.backend == "tensorrt":
        from personalive_trt.engines import require_tensorrt

        require_tensorrt()  # one line, before any work
    output = media.check_output_path(options.output)
    reference_path = sample.resolve_media(options.reference, "reference")
    driving_path = sample.resolve_media(options.driving, "driving")
    device, dtype = resolve_device(options.device, options.dtype)
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
    kind, location = parse_weights_spec(weights)
    if kind == "synthetic":
        print(SYNTHETIC_NOTICE.format(spec=f"{weights}"), file=sys.stderr)
    else:
        validate_weights_folder(Path(location))

    if options.backend == "torch":
        networks = Networks.from_models(load_models(weights, device=device, dtype=dtype), config)
    else:
        from personalive_trt.build import DEFAULT_ENGINES_DIR, load_networks

        networks = load_networks(options.engines or DEFAULT_ENGINES_DIR, options.backend, weights, config, device)
    animator = Animator(networks, config, seed=options.seed)
    animator.fuse_reference(reference)

    with media.VideoReader(driving_path, max_frames=options.max_frames) as reader:
        total = reader.info.frame_count
        if options.max_frames is not None and total is not None:
            total = min(total, options.max_frames)
        start = time.perf_counter()
        with media.VideoWriter(output, fps=reader.info.fps, size=(config.resolution, config.resolution),
                               audio_source=driving_path if reader.info.has_audio else None) as writer, \
                tqdm(total=total, unit="frame", desc="animating", disable=not progress) as bar:

            def emit(frame: np.ndarray) -> None:
                writer.write(frame)
                bar.update(1)
                bar.set_postfix(fps=f"{bar.n / max(time.perf_counter() - start, 1e-9):.2f}")

            emitted = stream_video(animator, (framer(frame) for frame in reader), emit)
    return RunStats(frames=emitted, seconds=time.perf_counter() - start, weights=weights,
                    backend=networks.description)
