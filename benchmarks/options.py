"""What ``personalive-trt bench`` measures: its options, their checks, the stream config they imply, and the
fields that open every report (which options, where)."""
from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from personalive_trt.choices import Backend, CompileMode, Decoder, Mode

MAX_KEYFRAMES = 3


class BenchError(ValueError):
    """A bad option or an impossible combination (printed as one line)."""


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark. ``device``/``dtype`` ``"auto"``: CUDA + fp16 when a GPU is present, else CPU + fp32.

    ``mode``: ``stream`` (the streaming runtime, :mod:`.benchmark`) or ``offline`` (the original's offline loop on
    the same clip, :mod:`.offline`: the offline runtime, or its reference loop with ``reference_loop``; there
    ``calls`` counts passes over the clip, ``warmup`` windows of the discarded pass, and ``max_frames`` caps the
    clip)."""

    backend: str = "torch"
    graphs: bool = True
    weights: str = "auto"
    engines: Optional[Path] = None
    device: str = "auto"
    dtype: str = "auto"
    window: int = 4
    resolution: int = 512
    keyframes: int = 0
    warmup: int = 8
    calls: int = 30
    capture_fps: Optional[float] = None
    compare: bool = False
    seed: int = 42
    json: Optional[Path] = None
    vae: str = "full"
    compile: str = "off"  # torch.compile: auto, on, off (personalive_trt.runtime.compile.resolve_compile)
    mode: str = "stream"
    max_frames: Optional[int] = None
    reference_loop: bool = False
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))

    def validate(self) -> None:
        if self.backend not in tuple(Backend):
            raise BenchError(f"--backend {self.backend!r}: expected one of {Backend.names()}")
        if not 0 <= self.keyframes <= MAX_KEYFRAMES:
            raise BenchError(f"--keyframes {self.keyframes}: expected 0..{MAX_KEYFRAMES}")
        if self.window < 1:
            raise BenchError(f"--window {self.window}: expected a positive number of frames")
        if self.resolution < 64 or self.resolution % 64:
            raise BenchError(f"--resolution {self.resolution}: expected a positive multiple of 64")
        if self.calls < 1:
            raise BenchError(f"--calls {self.calls}: expected at least 1 measured call")
        if self.warmup < 0:
            raise BenchError(f"--warmup {self.warmup}: expected 0 or more calls")
        if self.capture_fps is not None and not self.capture_fps > 0:
            raise BenchError(f"--capture-fps {self.capture_fps}: expected a positive frame rate")
        if self.dtype not in ("auto", "fp32", "fp16"):
            raise BenchError(f"--dtype {self.dtype!r}: expected auto, fp32 or fp16")
        if self.vae not in tuple(Decoder):
            raise BenchError(f"--vae {self.vae!r}: expected one of {Decoder.names()}")
        if self.compile not in tuple(CompileMode):
            raise BenchError(f"--compile {self.compile!r}: expected {CompileMode.names(' or ')}")
        if self.compile == CompileMode.ON and self.backend != Backend.TORCH:
            raise BenchError(f"--compile on: only the torch backend is compiled, not --backend {self.backend}")
        if self.engines is not None and self.backend == Backend.TORCH:
            raise BenchError("--engines is for --backend onnxruntime or tensorrt")
        if self.mode not in tuple(Mode):
            raise BenchError(f"--mode {self.mode!r}: expected {Mode.names(' or ')}")
        if self.mode == Mode.OFFLINE:
            self._check_offline()
        elif self.max_frames is not None:
            raise BenchError("--max-frames applies to --mode offline (the stream mode loops over the clip)")
        elif self.reference_loop:
            raise BenchError("--reference-loop applies to --mode offline (the stream mode's --compare times the "
                             "reference loop beside the runtime)")

    def _check_offline(self) -> None:
        """What ``--mode offline`` cannot measure, refused by name (``run --mode offline`` refuses the same)."""
        if self.backend != Backend.TORCH:
            raise BenchError(f"not supported yet in --mode offline: --backend {self.backend} (the bench's offline "
                             "mode opens torch networks only)")
        if self.compile == CompileMode.ON and self.reference_loop:
            raise BenchError("--compile on: compiles the offline runtime's networks, not --reference-loop's")
        if self.keyframes:
            raise BenchError(f"--keyframes {self.keyframes}: --mode offline takes its keyframes by the original's "
                             "own rule on the clip")
        if self.window != 4:
            raise BenchError(f"--window {self.window}: --mode offline runs the original's window of 4")
        if self.compare:
            raise BenchError("--compare applies to --mode stream; compare the per_frame_ms of the two modes' reports")
        if self.capture_fps is not None:
            raise BenchError("--capture-fps applies to --mode stream (its glass-to-glass latency)")
        if self.max_frames is not None and self.max_frames < 1:
            raise BenchError(f"--max-frames {self.max_frames}: expected a positive number of frames")


def resolve_device_dtype(options: BenchOptions):
    from personalive_trt.devices import resolve_device

    # The backend decides what `auto` may resolve to: TensorRT never runs on the CPU.
    return resolve_device(options.device, options.dtype, backend=options.backend)


def stream_config(options: BenchOptions):
    from personalive_trt.config import StreamConfig

    k = options.keyframes
    if k == 0:
        return StreamConfig(window=options.window, resolution=options.resolution, max_keyframes=0, vae=options.vae)
    return StreamConfig(window=options.window, resolution=options.resolution, keyframe_threshold=-1.0,
                        keyframe_start=0, max_keyframes=k, vae=options.vae)


def report_identity(options: BenchOptions, mode: str, device, description: str) -> dict:
    """The fields that open both modes' reports: the schema, the mode, the command and options, where it ran
    and what ran (``description``)."""
    import torch

    from personalive_trt.bench.timing import device_name

    return {
        "schema": 1,
        "mode": mode,
        "command": options.command,
        "options": {key: (str(value) if isinstance(value, Path) else value)
                    for key, value in asdict(options).items() if key != "command"},
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backend": options.backend,
        "runtime": description,
    }
