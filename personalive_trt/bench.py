"""Streaming benchmark: how fast and how late the runtime animates, measured the way a live session runs.

``personalive-trt bench`` (and ``python benchmarks/bench_stream.py``) drives
:class:`~personalive_trt.runtime.StreamRuntime` with the built-in sample portrait and driving clip and reports
one JSON document (``--json``) plus a short summary.

Protocol (all warm-up excluded from every figure):

1. **setup**: load the networks and build the runtime (CUDA graphs are captured here) -> ``setup_s``.
2. **cold session**: ``fuse_reference`` on a fresh runtime (``reference_fusion_cold_ms``, includes lazy
   initialisation) and ``--warmup`` calls, all discarded.
3. **measured session**: ``swap_reference`` (``reference_fusion_ms``), the first call (``time_to_first_frame_ms``
   is from the start of the fusion to that call's frames on the host), then calls until ``--keyframes K``
   history keyframes are in effect, plus one more call of the measured kind; then ``--calls`` synchronous
   calls (step time, chunk latency) and, on CUDA, ``--calls`` pipelined calls (``fps``).
4. **per-stage breakdown** (eager): a CUDA graph replays a whole call, so the per-network split needs calls
   without graphs. Each backend's ``infer`` is wrapped (on the instance) with CUDA events (``perf_counter``
   on CPU); what is left of the call is ``glue`` (input copy, resize, keypoint transfer and drawing, face
   crops, pile shifts, noise, DDIM update, uint8 conversion, output copy). With graphs this is a second,
   eager runtime over the same networks; without graphs (CPU, ``--no-graph``) the measured calls themselves
   are instrumented.
5. ``--compare``: the reference :class:`~personalive_trt.pipeline.Animator` (eager, host keyframe decisions,
   Python-list piles) runs the same protocol on the same inputs in the same process;
   ``compare.speedup`` = its step p50 / the runtime's step p50.

Forcing keyframes. ``--keyframes K`` sets ``keyframe_threshold=-1`` (every test adds a keyframe: a distance is
never negative), ``keyframe_start=0`` and ``max_keyframes=K`` (``K=0``: no keyframe test at all). Calls 1..K
then each take one keyframe, so from call ``K+1`` on every call attends to ``1+K`` banks and runs without
the keyframe test: the measured calls are all of that kind (checked: the report's ``keyframes`` field is what
the runtime had in effect).

Latency model (``W`` = window, ``S`` = denoising steps = chunks in the pile, ``f`` = capture rate in frames/s,
``capture_fps`` = ``--capture-fps`` capped at the measured ``fps``, or ``fps`` itself when not given):

* ``chunk_latency_ms``: from ``submit`` of a chunk (its last input frame has arrived: it is handed over at
  once) to the frames that call emits being ready on the host (``Output.wait`` returned), one call in flight.
* ``inherent_delay_ms`` = ``(S-1) * W / f``: a driving chunk is emitted by the call ``S-1`` calls after the one
  it entered, and calls are ``W / f`` apart at capture rate f (the algorithm's 3-chunk delay).
* ``capture_wait_ms`` = ``(W-1) / (2 f)``: a frame waits for the rest of its chunk to be captured; frame ``k``
  of ``0..W-1`` waits ``(W-1-k)/f``, on average ``(W-1)/(2f)`` (the first frame of a chunk ``(W-1)/f``).
* ``glass_to_glass_ms.pXX`` = ``capture_wait_ms + inherent_delay_ms + chunk_latency_ms.pXX``: capture of a
  driving frame (its timestamp) to the output frame it drives being on the host, for the average frame of a
  chunk; ``glass_to_glass_ms.oldest_frame_p50`` uses the first frame's wait. Display and camera exposure
  are not included.

FLOPs. For the full-size networks at 512 and window 4 the counts come from the reference data's
``flops_full_512.json`` (``flops.source == "reference_json"``; the denoising UNet for K keyframes is
interpolated linearly between its 0- and 3-keyframe counts: only the reference-attention key/value length
grows with K). Otherwise the torch backend counts one eager call of the measured kind with
``torch.utils.flop_counter.FlopCounterMode`` per network (``"counted"``; CPU flash attention, which the
counter misses, is counted with the SDPA formula). Both count 2 FLOPs per multiply-accumulate of matmuls,
convolutions and attention, networks only. ``tflops`` = FLOPs per step / step time p50.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

BACKEND_NAMES = ("torch", "onnxruntime", "tensorrt")
MAX_KEYFRAMES = 3
FLOPS_JSON_ENV = "PERSONALIVE_FLOPS_JSON"
#: Where the full-size FLOP counts live (the reference data beside the repository).
DEFAULT_FLOPS_JSON = Path(__file__).resolve().parents[2] / "shared" / "reference" / "flops_full_512.json"
STEADY_ROLES = ("pose_encoder", "motion_encoder", "pose_guider", "denoising_unet", "vae_decoder")
_JSON_KEYS = {
    "pose_encoder": "step.motion_extractor (4 frames 256^2)",
    "motion_encoder": "step.motion_encoder (4 faces 224^2)",
    "pose_guider": "step.pose_guider (4 maps 512^2)",
    "vae_decoder": "step.vae_decode (4 frames 64^2 -> 512^2)",
}
_JSON_UNET = ("step.denoising_unet3d (16 frames, ref banks, 0 keyframes)",
              "step.denoising_unet3d (16 frames, ref banks, 3 keyframes)")


class BenchError(ValueError):
    """A bad option or an impossible combination (printed as one line)."""


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark. ``device``/``dtype`` ``"auto"``: CUDA + fp16 when a GPU is present, else CPU + fp32."""

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
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in sys.argv))

    def validate(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise BenchError(f"--backend {self.backend!r}: expected one of {', '.join(BACKEND_NAMES)}")
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
        if self.engines is not None and self.backend == "torch":
            raise BenchError("--engines is for --backend onnxruntime or tensorrt")


# ---- small helpers ---------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max of ``values`` (linear interpolation), rounded to 0.001."""
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    stats = {"p50": np.percentile(a, 50), "p95": np.percentile(a, 95), "p99": np.percentile(a, 99),
             "mean": a.mean(), "min": a.min(), "max": a.max()}
    return {k: round(float(v), 3) for k, v in stats.items()}


class Clock:
    """Brackets device work: CUDA events on a stream (device time), or ``perf_counter`` on CPU."""

    def __init__(self, device, stream=None) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.stream = stream if stream is not None else (torch.cuda.current_stream(device) if self.cuda else None)

    def mark(self, stream=None):
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record(stream or self.stream)
        return event

    def ms(self, start, end) -> float:
        """Milliseconds between two marks (the end mark must have completed on CUDA)."""
        if not self.cuda:
            return (end - start) * 1e3
        end.synchronize()
        return start.elapsed_time(end)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


class StageProbe:
    """Times (and optionally counts the FLOPs of) every backend ``infer`` call, by wrapping it on the instance.

    ``begin_call``/``end_call`` bracket one streaming call; ``calls`` keeps, per call, role -> ms.
    """

    def __init__(self, networks, clock: Clock) -> None:
        self.networks, self.clock = networks, clock
        self.calls: list[dict[str, float]] = []
        self.flops: dict[str, int] | None = None
        self._marks: list[tuple[str, Any, Any]] | None = None
        self._counting = False

    def __enter__(self) -> "StageProbe":
        for role, backend in self.networks.backends.items():
            backend.infer = self._wrap(role, backend.infer)  # instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        for backend in self.networks.backends.values():
            vars(backend).pop("infer", None)

    def _wrap(self, role: str, infer: Callable) -> Callable:
        def timed(inputs, *args, **kwargs):
            if self._counting:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formula()) as counter:
                    out = infer(inputs, *args, **kwargs)
                self.flops[role] = self.flops.get(role, 0) + int(counter.get_total_flops())
                return out
            if self._marks is None:
                return infer(inputs, *args, **kwargs)
            start = self.clock.mark(_current_stream(self.clock))
            out = infer(inputs, *args, **kwargs)
            self._marks.append((role, start, self.clock.mark(_current_stream(self.clock))))
            return out

        return timed

    def begin_call(self) -> None:
        self._marks = []

    def end_call(self) -> None:
        """Resolve this call's marks (after the call's output was waited for)."""
        stages: dict[str, float] = {}
        for role, start, end in self._marks or []:
            stages[role] = stages.get(role, 0.0) + self.clock.ms(start, end)
        self.calls.append(stages)
        self._marks = None

    def count_flops(self, call: Callable[[], Any]) -> None:
        """Run ``call`` (one eager streaming call) counting each network's FLOPs."""
        self.flops, self._counting = {}, True
        try:
            call()
        finally:
            self._counting = False


def _current_stream(clock: Clock):
    if not clock.cuda:
        return None
    import torch

    return torch.cuda.current_stream()


def _cpu_attention_formula() -> dict:
    """FlopCounterMode misses CPU flash attention (torch 2.x); count it with the SDPA formula."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def formula(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: formula}


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def host_peak_rss_mb() -> float | None:
    """Peak resident set size of this process (Linux/macOS), MiB."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def memory_report(device) -> dict:
    import torch

    if device.type != "cuda":
        return {"kind": "host_rss", "peak_mb": host_peak_rss_mb()}
    free, total = torch.cuda.mem_get_info(device)
    return {"kind": "cuda", "peak_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
            "device_used_mb": round((total - free) / 2**20, 1), "device_total_mb": round(total / 2**20, 1)}


# ---- inputs ----------------------------------------------------------------------------------------------
def sample_inputs(resolution: int, window: int):
    """The built-in sample portrait and the sample driving clip cut into chunks (the session loops over them)."""
    import numpy as np

    from personalive_trt import framing, media, sample

    reference = framing.resize_square(media.read_image(sample.sample_reference()), resolution)
    with media.VideoReader(sample.sample_driving()) as reader:
        frames = [framing.resize_square(frame, resolution) for frame in reader]
    if not frames:
        raise BenchError("the built-in driving sample has no frames")
    needed = max(len(frames) // window, 1) * window
    frames = [frames[i % len(frames)] for i in range(needed)]
    return reference, [np.stack(frames[i:i + window]) for i in range(0, needed, window)]


# ---- FLOPs -----------------------------------------------------------------------------------------------
def flops_json_path() -> Path:
    return Path(os.environ.get(FLOPS_JSON_ENV, DEFAULT_FLOPS_JSON))


def reference_flops(keyframes: int) -> dict[str, int] | None:
    """Per-network FLOPs of one steady call at full size, 512, window 4, from the reference JSON (None if absent)."""
    path = flops_json_path()
    try:
        data = json.loads(path.read_text())
        per_role = {role: int(data[key]) for role, key in _JSON_KEYS.items()}
        unet0, unet3 = int(data[_JSON_UNET[0]]), int(data[_JSON_UNET[1]])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    per_role["denoising_unet"] = unet0 + round((unet3 - unet0) * keyframes / 3)
    return per_role


def is_full_size(shapes) -> bool:
    """The released UNet widths (the only networks ``flops_full_512.json`` describes)."""
    return sorted({bank.channels for bank in shapes.banks}) == [320, 640, 1280]


# ---- sessions --------------------------------------------------------------------------------------------
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


def _fuse(engine, reference, clock: Clock) -> float:
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
    session.fusion_ms = _fuse(engine, reference, clock)
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


# ---- the benchmark ---------------------------------------------------------------------------------------
def _resolve(options: BenchOptions):
    import torch

    from personalive_trt.animate import resolve_device

    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = options.dtype
    if dtype == "auto":
        dtype = "fp32" if device == "cpu" else "fp16"
    return resolve_device(device, dtype)


def stream_config(options: BenchOptions):
    from personalive_trt.config import StreamConfig

    k = options.keyframes
    if k == 0:
        return StreamConfig(window=options.window, resolution=options.resolution, max_keyframes=0)
    return StreamConfig(window=options.window, resolution=options.resolution, keyframe_threshold=-1.0,
                        keyframe_start=0, max_keyframes=k)


def run_benchmark(options: BenchOptions, log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark described in the module docstring; returns the report (also written to ``--json``)."""
    import torch

    from personalive_trt.animate import resolve_weights
    from personalive_trt.runtime import StreamRuntime
    from personalive_trt.weights import load_models

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    options.validate()
    if options.backend == "tensorrt":
        from personalive_trt.engines import require_tensorrt

        require_tensorrt()  # one line, before any work
    device, dtype = _resolve(options)
    config = stream_config(options)
    graphs = None if options.graphs else False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reference, chunks = sample_inputs(options.resolution, options.window)

    setup = time.perf_counter()
    models = None
    if options.backend == "torch":
        weights = resolve_weights(options.weights)
        log(f"bench: loading {weights} on {device} ({str(dtype).removeprefix('torch.')})")
        models = load_models(weights, device=device, dtype=dtype)
        runtime = StreamRuntime.from_models(models, config, backend="torch", seed=options.seed, graphs=graphs)
    else:
        from personalive_trt.build import DEFAULT_ENGINES_DIR, read_build

        engines = Path(options.engines or DEFAULT_ENGINES_DIR)
        record = read_build(engines)
        weights = record.weights if options.weights == "auto" else options.weights
        if weights != record.weights:
            raise BenchError(f"{engines} was built from weights {record.weights!r}, not {weights!r}")
        runtime = StreamRuntime.from_engines(engines, config, backend=options.backend, device=device,
                                             seed=options.seed, graphs=graphs)
    clock = Clock(device, runtime.stream)
    clock.sync()
    setup_s = time.perf_counter() - setup
    log(f"bench: {runtime.description}, setup {setup_s:.1f} s")

    # Cold session: lazy initialisation, discarded.
    cold_fusion_ms = _fuse(runtime, reference, clock)
    for i in range(options.warmup):
        runtime.step(chunks[i % len(chunks)])
    clock.sync()

    # Measured session. Without graphs the measured calls are instrumented directly.
    eager = not runtime.use_graphs
    probe = StageProbe(runtime.nets, clock) if eager else None
    log(f"bench: measuring {options.calls} call(s) with {options.keyframes} keyframe(s) in effect")
    if probe is not None:
        with probe:
            session = run_session(runtime, reference, chunks, options.keyframes, options.calls, clock, probe,
                                  count_flops=options.backend == "torch", pipelined=device.type == "cuda")
    else:
        session = run_session(runtime, reference, chunks, options.keyframes, options.calls, clock,
                              pipelined=device.type == "cuda")
    memory = memory_report(device)

    if not eager:  # per-stage split: a second, eager runtime over the same networks
        log("bench: eager pass for the per-stage breakdown")
        eager_runtime = type(runtime)(runtime.nets, config, seed=options.seed, graphs=False)
        probe = StageProbe(eager_runtime.nets, Clock(device, eager_runtime.stream))
        with probe:
            eager_session = run_session(eager_runtime, reference, chunks, options.keyframes, options.calls,
                                        Clock(device, eager_runtime.stream), probe,
                                        count_flops=options.backend == "torch")
        del eager_runtime
    else:
        eager_session = session
    breakdown = stage_breakdown(probe, eager_session)
    breakdown["mode"] = "measured calls (runtime is eager)" if eager else "separate eager runtime, same networks"

    fps = session.fps if session.fps is not None else options.window * 1e3 / percentiles(session.step_ms)["mean"]
    report = {
        "schema": 1,
        "command": options.command,
        "options": {key: (str(value) if isinstance(value, Path) else value)
                    for key, value in asdict(options).items() if key != "command"},
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backend": options.backend,
        "runtime": runtime.description,
        "graphs": runtime.use_graphs,
        "weights": weights,
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "config": {"window": config.window, "steps": config.steps, "resolution": config.resolution,
                   "keyframes": options.keyframes, "keyframe_threshold": config.keyframe_threshold,
                   "keyframe_start": config.keyframe_start, "max_keyframes": config.max_keyframes},
        "keyframes": session.keyframes,
        "warmup_calls": options.warmup,
        "measured_calls": options.calls,
        "setup_s": round(setup_s, 3),
        "reference_fusion_cold_ms": round(cold_fusion_ms, 3),
        "reference_fusion_ms": round(session.fusion_ms, 3),
        "time_to_first_frame_ms": round(session.first_frame_ms, 3),
        "step_ms": percentiles(session.step_ms),
        "fps": round(fps, 6),
        "throughput_mode": "pipelined" if session.fps is not None else "sequential",
        "chunk_latency_ms": percentiles(session.chunk_latency_ms),
    }
    report.update(latency_model(config, fps, options.capture_fps, report["chunk_latency_ms"],
                                report["step_ms"]["p50"], session.first_frame_ms))
    report["stages_ms"] = breakdown
    report["flops"] = flops_report(runtime, options, probe, report["step_ms"]["p50"])
    report["memory"] = memory

    if options.compare:
        report["compare"] = compare_reference(options, models, config, device, dtype, reference, chunks, runtime,
                                              report["step_ms"]["p50"], log)
    if options.json is not None:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def stage_breakdown(probe: StageProbe, session: Session) -> dict:
    """Per-network p50 of the eager calls, ``glue`` = call time - networks, and the eager call's own p50."""
    import numpy as np

    roles = sorted({role for call in probe.calls for role in call})
    per_role = {role: round(float(np.median([call.get(role, 0.0) for call in probe.calls])), 3) for role in roles}
    glue = [step - sum(call.values()) for step, call in zip(session.step_ms, probe.calls)]
    return {"eager_step_p50": round(float(np.median(session.step_ms)), 3), "networks": per_role,
            "glue": round(float(np.median(glue)), 3)}


def latency_model(config, fps: float, capture_fps: float | None, chunk: dict, step_p50: float,
                  first_frame_ms: float) -> dict:
    rate = fps if capture_fps is None else min(capture_fps, fps)
    period = config.window / rate * 1e3  # ms between calls at capture rate
    inherent = (config.steps - 1) * period
    wait = (config.window - 1) / (2 * rate) * 1e3
    oldest = (config.window - 1) / rate * 1e3
    g2g = {key: round(wait + inherent + chunk[key], 3) for key in ("p50", "p95", "p99")}
    g2g["oldest_frame_p50"] = round(oldest + inherent + chunk["p50"], 3)
    return {
        "capture_fps": round(rate, 6),
        "inherent_delay_ms": round(inherent, 3),
        "capture_wait_ms": round(wait, 3),
        "glass_to_glass_ms": g2g,
        # derived: the first driven chunk leaves S-1 back-to-back calls after the first frame
        "time_to_first_driven_frame_ms": round(first_frame_ms + (config.steps - 1) * step_p50, 3),
    }


def flops_report(runtime, options: BenchOptions, probe: StageProbe | None, step_p50_ms: float) -> dict:
    config = runtime.config
    per_role, source = None, None
    if is_full_size(runtime.shapes) and config.resolution == 512 and config.window == 4:
        per_role = reference_flops(options.keyframes)
        source = f"reference_json ({flops_json_path()})" if per_role else None
    if per_role is None and probe is not None and probe.flops and sum(probe.flops.values()) > 0:
        per_role = {role: probe.flops.get(role, 0) for role in STEADY_ROLES}
        source = "counted (FlopCounterMode, one eager call of the measured kind)"
    if per_role is None:
        why = ("engine backends cannot be counted and flops_full_512.json does not apply (or is missing)"
               if options.backend != "torch" else "flops_full_512.json missing and nothing counted")
        return {"source": None, "per_step": None, "per_network": None, "tflops": None, "note": why}
    total = sum(per_role.values())
    return {"source": source, "per_step": total, "per_network": per_role,
            "tflops": round(total / (step_p50_ms * 1e-3) / 1e12, 6)}


def compare_reference(options: BenchOptions, models, config, device, dtype, reference, chunks, runtime,
                      runtime_p50: float, log) -> dict:
    """The reference Animator (eager) on the same inputs, same protocol; speedup = its p50 / the runtime's."""
    import torch

    from personalive_trt.pipeline import Animator
    from personalive_trt.weights import load_models

    if models is None:  # engine backends: the reference needs the torch weights the engines were built from
        from personalive_trt.build import DEFAULT_ENGINES_DIR, read_build

        weights = read_build(Path(options.engines or DEFAULT_ENGINES_DIR)).weights
        models = load_models(weights, device=device, dtype=dtype)
    log("bench: --compare: the reference Animator on the same inputs")
    animator = Animator(models, config, seed=options.seed)
    clock = Clock(device)
    with torch.no_grad():
        _fuse(animator, reference, clock)  # cold
        session = run_session(animator, reference, chunks, options.keyframes, options.calls, clock)
    step = percentiles(session.step_ms)
    return {"reference": animator.description, "step_ms": step,
            "reference_fusion_ms": round(session.fusion_ms, 3),
            "time_to_first_frame_ms": round(session.first_frame_ms, 3),
            "fps": round(config.window * 1e3 / step["mean"], 3),
            "speedup": round(step["p50"] / runtime_p50, 3) if runtime_p50 > 0 else None}


# ---- presentation ----------------------------------------------------------------------------------------
def summary(report: dict) -> str:
    s, c, g = report["step_ms"], report["chunk_latency_ms"], report["glass_to_glass_ms"]
    lines = [
        f"{report['runtime']} on {report['device']} ({report['dtype']}, window {report['config']['window']}, "
        f"{report['config']['resolution']}px, {report['keyframes']} keyframes)",
        f"  step      p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  p99 {s['p99']:.1f} ms   {report['fps']:.2f} fps "
        f"({report['throughput_mode']})",
        f"  chunk     p50 {c['p50']:.1f}  p95 {c['p95']:.1f}  p99 {c['p99']:.1f} ms   glass-to-glass p50 "
        f"{g['p50']:.1f} ms at {report['capture_fps']:.2f} fps capture",
        f"  fusion    {report['reference_fusion_ms']:.1f} ms (cold {report['reference_fusion_cold_ms']:.1f}), first "
        f"frame {report['time_to_first_frame_ms']:.1f} ms",
    ]
    stages = report["stages_ms"]
    parts = "  ".join(f"{role} {ms:.1f}" for role, ms in stages["networks"].items())
    lines.append(f"  eager     {stages['eager_step_p50']:.1f} ms = {parts}  glue {stages['glue']:.1f}")
    flops = report["flops"]
    if flops["tflops"] is not None:
        lines.append(f"  compute   {flops['per_step'] / 1e12:.3f} TFLOP/step, {flops['tflops']:.3f} TFLOP/s")
    memory = report["memory"]
    peak = memory.get("peak_allocated_mb", memory.get("peak_mb"))
    lines.append(f"  memory    peak {peak} MiB ({memory['kind']})")
    if "compare" in report:
        cmp = report["compare"]
        lines.append(f"  compare   reference Animator step p50 {cmp['step_ms']['p50']:.1f} ms; speed ratio "
                     f"(reference / runtime) {cmp['speedup']:.2f}x")
    return "\n".join(lines)


def _user_errors() -> tuple[type[BaseException], ...]:
    from personalive_trt.build import BuildError
    from personalive_trt.engines import EngineError, TensorRTNotAvailableError
    from personalive_trt.media import MediaError
    from personalive_trt.pipeline import NonFiniteError
    from personalive_trt.weights import WeightsError

    return (BenchError, MediaError, WeightsError, NonFiniteError, BuildError, EngineError, TensorRTNotAvailableError,
            ValueError, FileNotFoundError)


def bench(
    backend: str = typer.Option("torch", help="torch, onnxruntime or tensorrt (engines from `personalive-trt build`)."),
    no_graph: bool = typer.Option(False, "--no-graph", help="Run the runtime eagerly (no CUDA graphs)."),
    weights: str = typer.Option("auto", help="Weights folder, 'synthetic', 'synthetic:small' or 'synthetic:full' "
                                "('auto': ./pretrained_weights if present, else synthetic; engine backends: the "
                                "weights the engines were built from)."),
    engines: Optional[Path] = typer.Option(None, help="Engines folder of `build` (default ./engines_cache)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp16 or fp32."),
    window: int = typer.Option(4, help="Frames per chunk."),
    resolution: int = typer.Option(512, help="Frame size (multiple of 64; 512 is the model's)."),
    keyframes: int = typer.Option(0, help="History keyframes in effect during the measured calls (0..3)."),
    warmup: int = typer.Option(8, help="Calls of the discarded cold session."),
    calls: int = typer.Option(30, help="Measured calls (each phase)."),
    capture_fps: Optional[float] = typer.Option(None, help="Capture rate for glass-to-glass latency (default: "
                                                "the measured fps)."),
    compare: bool = typer.Option(False, "--compare", help="Also run the reference Animator; print the speed ratio."),
    seed: int = typer.Option(42, help="Seed of the diffusion noise."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
) -> None:
    """Benchmark the streaming runtime: fps, step and chunk latency, glass-to-glass, stages, TFLOP/s, memory."""
    options = BenchOptions(backend=backend, graphs=not no_graph, weights=weights, engines=engines, device=device,
                           dtype=dtype, window=window, resolution=resolution, keyframes=keyframes, warmup=warmup,
                           calls=calls, capture_fps=capture_fps, compare=compare, seed=seed, json=json_path)
    try:
        report = run_benchmark(options)
    except _user_errors() as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    typer.echo(summary(report))
    if json_path is not None:
        typer.echo(f"wrote {json_path}")


def standalone_app() -> typer.Typer:
    """A one-command app running :func:`bench` (the script's entry point; tests drive it with CliRunner)."""
    app = typer.Typer(add_completion=False)
    app.command()(bench)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_stream.py ARGS``: the same command as ``personalive-trt bench``."""
    standalone_app()(args=argv, prog_name="bench_stream.py")


__all__ = ["BenchError", "BenchOptions", "bench", "main", "run_benchmark", "standalone_app", "summary"]
