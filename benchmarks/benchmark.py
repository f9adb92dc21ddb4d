"""Streaming benchmark: how fast and how late the runtime animates, measured the way a live session runs.
(``--mode offline``, the original's offline loop per frame on the same clip: :mod:`.offline`.)

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
   calls (step time, chunk latency) and, on CUDA, ``--calls`` pipelined calls (``fps``). ``step_ms`` is the
   device time of each call's work (CUDA events on the runtime's stream from where ``submit`` enqueues its
   first copy to after its output copy; ``perf_counter`` on CPU); ``host_staging_ms`` is ``submit``'s host
   part before that (frame checks, ring-slot wait, ``np.copyto`` into the pinned ring), reported apart.
   ``per_frame_ms`` = step mean / window, the offline mode's figure of the same name (``mode``: ``stream``).
4. **per-stage breakdown** (eager): a CUDA graph replays a whole call, so the per-network split needs calls
   without graphs. Each backend's ``infer`` is wrapped (on the instance) with CUDA events (``perf_counter``
   on CPU); what is left of the call is ``glue`` (input copy, resize, keypoint transfer and drawing, face
   crops, pile shifts, noise, DDIM update, uint8 conversion, output copy). With graphs this is a second,
   eager runtime over the same networks; without graphs (CPU, ``--no-graph``) the measured calls themselves
   are instrumented.
5. ``--compare``: the reference :class:`~personalive_trt.runtime.reference_loop.Animator` (eager, host keyframe decisions,
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
convolutions and attention, networks only. ``tflops`` = FLOPs per step / step time p50. The table has only the
full VAE decoder: with ``--vae tiny`` its ``vae_decoder`` entry is replaced by TAESD's decode at the released
config (madebyollin/taesd), counted the same way on the meta device (no weights, no compute).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from personalive_trt.bench.flops import flops_report
from personalive_trt.choices import Backend, Mode
from personalive_trt.bench.options import (
    BenchError,
    BenchOptions,
    report_identity,
    resolve_device_dtype,
    stream_config,
)
from personalive_trt.bench.offline import run_offline_benchmark
from personalive_trt.bench.session import Session, fuse_timed, run_session, sample_inputs
from personalive_trt.bench.timing import Clock, StageProbe, memory_report, percentiles


def run_benchmark(options: BenchOptions, log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark described in the module docstring; returns the report (also written to ``--json``)."""
    import torch

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    options.validate()
    # Device first: on a machine without CUDA, `--backend tensorrt` is refused for the device (the real cause),
    # not for a missing TensorRT that could not run there anyway.
    device, dtype = resolve_device_dtype(options)
    if options.backend == Backend.TENSORRT:
        from personalive_trt.engines.backends import require_tensorrt

        require_tensorrt()  # one line, before any work
    if options.mode == Mode.OFFLINE:
        return _write_report(run_offline_benchmark(options, log), options)
    config = stream_config(options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reference, chunks = sample_inputs(options.resolution, options.window)

    setup = time.perf_counter()
    runtime, models, weights = open_runtime(options, config, device, dtype, log)
    clock = Clock(device, runtime.stream)
    clock.sync()
    setup_s = time.perf_counter() - setup
    log(f"bench: {runtime.description}, setup {setup_s:.1f} s")

    # Cold session: lazy initialisation, discarded.
    cold_fusion_ms = fuse_timed(runtime, reference, clock)
    for i in range(options.warmup):
        runtime.step(chunks[i % len(chunks)])
    clock.sync()

    session, memory, probe, breakdown = measure(runtime, options, config, device, reference, chunks, clock, log)
    report = {
        **report_identity(options, "stream", device, runtime.description),
        "graphs": runtime.use_graphs,
        "compile": runtime.compile_report(),  # null: eager modules; else cache cold/warm and seconds per network
        "weights": weights,
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "vae": config.vae,  # the per-step decoder: "full" (SD VAE) or "tiny" (TAESD)
        "config": {"vae": config.vae, "window": config.window, "steps": config.steps, "resolution": config.resolution,
                   "keyframes": options.keyframes, "keyframe_threshold": config.keyframe_threshold,
                   "keyframe_start": config.keyframe_start, "max_keyframes": config.max_keyframes},
        "keyframes": session.keyframes,
        "warmup_calls": options.warmup,
        "measured_calls": options.calls,
        "setup_s": round(setup_s, 3),
        "reference_fusion_cold_ms": round(cold_fusion_ms, 3),
        **session_figures(session, options, config, device),
    }
    report["stages_ms"] = breakdown
    report["flops"] = flops_report(runtime, options, probe, report["step_ms"]["p50"])
    report["memory"] = memory

    if options.compare:
        report["compare"] = compare_reference(options, models, config, device, dtype, reference, chunks, runtime,
                                              report["step_ms"]["p50"], log)
    return _write_report(report, options)


def _write_report(report: dict, options: BenchOptions) -> dict:
    if options.json is not None:
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def open_runtime(options: BenchOptions, config, device, dtype, log: Callable[[str], None]):
    """The runtime to measure, the torch models it runs (None for engines) and the weights spec."""
    from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR, read_build
    from personalive_trt.models.weights import load_models, resolve_weights
    from personalive_trt.runtime.open import open_networks
    from personalive_trt.runtime.stream import StreamRuntime

    graphs = None if options.graphs else False
    if options.backend == Backend.TORCH:
        weights = resolve_weights(options.weights)
        log(f"bench: loading {weights} on {device} ({str(dtype).removeprefix('torch.')})")
        models = load_models(weights, device=device, dtype=dtype, vae=config.vae)
        networks = open_networks(Backend.TORCH, config=config, models=models, compile=options.compile)
        return StreamRuntime(networks, config, seed=options.seed, graphs=graphs), models, weights
    engines = Path(options.engines or DEFAULT_ENGINES_DIR)
    record = read_build(engines)
    weights = record.weights if options.weights == "auto" else options.weights
    if weights != record.weights:
        raise BenchError(f"{engines} was built from weights {record.weights!r}, not {weights!r}")
    runtime = StreamRuntime.from_engines(engines, config, backend=options.backend, device=device, seed=options.seed,
                                         graphs=graphs)
    return runtime, None, weights


def measure(runtime, options: BenchOptions, config, device, reference, chunks, clock, log):
    """The measured session, the memory it peaked at, the probe that timed each network (eager calls), and the
    per-stage breakdown.

    Without graphs the measured calls are instrumented directly; with graphs a second, eager runtime over the same
    networks gives the breakdown (a graph replays a whole call)."""
    eager = not runtime.use_graphs
    probe = StageProbe(runtime.nets, clock) if eager else None
    log(f"bench: measuring {options.calls} call(s) with {options.keyframes} keyframe(s) in effect")
    if probe is not None:
        with probe:
            session = run_session(runtime, reference, chunks, options.keyframes, options.calls, clock, probe,
                                  count_flops=options.backend == Backend.TORCH, pipelined=device.type == "cuda")
    else:
        session = run_session(runtime, reference, chunks, options.keyframes, options.calls, clock,
                              pipelined=device.type == "cuda")
    memory = memory_report(device)  # before the eager pass below allocates its own buffers
    if not eager:
        log("bench: eager pass for the per-stage breakdown")
        eager_runtime = type(runtime)(runtime.nets, config, seed=options.seed, graphs=False)
        probe = StageProbe(eager_runtime.nets, Clock(device, eager_runtime.stream))
        with probe:
            eager_session = run_session(eager_runtime, reference, chunks, options.keyframes, options.calls,
                                        Clock(device, eager_runtime.stream), probe,
                                        count_flops=options.backend == Backend.TORCH)
        del eager_runtime
    else:
        eager_session = session
    breakdown = stage_breakdown(probe, eager_session)
    breakdown["mode"] = "measured calls (runtime is eager)" if eager else "separate eager runtime, same networks"
    return session, memory, probe, breakdown


def session_figures(session: Session, options: BenchOptions, config, device) -> dict:
    """The measured session's times, throughput and latency model (the report's fields from fusion on)."""
    fps = session.fps if session.fps is not None else options.window * 1e3 / percentiles(session.step_ms)["mean"]
    figures = {
        "reference_fusion_ms": round(session.fusion_ms, 3),
        "time_to_first_frame_ms": round(session.first_frame_ms, 3),
        "step_ms": percentiles(session.step_ms),
        "step_clock": "cuda_events" if device.type == "cuda" else "perf_counter",
        "host_staging_ms": percentiles(session.host_staging_ms),
        "fps": round(fps, 6),
        # the device time per frame: comparable with the offline mode's (personalive_trt.bench.offline)
        "per_frame_ms": round(percentiles(session.step_ms)["mean"] / options.window, 3),
        "throughput_mode": "pipelined" if session.fps is not None else "sequential",
        "chunk_latency_ms": percentiles(session.chunk_latency_ms),
    }
    figures.update(latency_model(config, fps, options.capture_fps, figures["chunk_latency_ms"],
                                 figures["step_ms"]["p50"], session.first_frame_ms))
    return figures


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


def compare_reference(options: BenchOptions, models, config, device, dtype, reference, chunks, runtime,
                      runtime_p50: float, log) -> dict:
    """The reference Animator (eager) on the same inputs, same protocol; speedup = its p50 / the runtime's."""
    import torch

    from personalive_trt.runtime.reference_loop import Animator
    from personalive_trt.models.weights import load_models

    if models is None:  # engine backends: the reference needs the torch weights the engines were built from
        from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR, read_build

        weights = read_build(Path(options.engines or DEFAULT_ENGINES_DIR)).weights
        models = load_models(weights, device=device, dtype=dtype, vae=config.vae)
    log("bench: --compare: the reference Animator on the same inputs")
    animator = Animator(models, config, seed=options.seed)
    clock = Clock(device)
    with torch.no_grad():
        fuse_timed(animator, reference, clock)  # cold
        session = run_session(animator, reference, chunks, options.keyframes, options.calls, clock)
    step = percentiles(session.step_ms)
    return {"reference": animator.description, "step_ms": step,
            "reference_fusion_ms": round(session.fusion_ms, 3),
            "time_to_first_frame_ms": round(session.first_frame_ms, 3),
            "fps": round(config.window * 1e3 / step["mean"], 3),
            "speedup": round(step["p50"] / runtime_p50, 3) if runtime_p50 > 0 else None}
