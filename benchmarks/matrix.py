"""The benchmark matrix: several variants measured in one process, each written in one schema.

``python -m personalive_trt.bench.matrix --out matrix.json`` (the GPU check's matrix step,
``scripts/gpu_check.sh``) loads the networks once and measures each variant of :data:`VARIANTS` with the
protocol of :mod:`.session`: fuse the sample reference, reach the variant's keyframes (+ one call of the
measured kind), then ``--calls`` timed calls (and, for the runtime on CUDA, ``--calls`` pipelined calls for
``fps``). Every variant object has the fields of :data:`VARIANT_FIELDS`, whatever happened to it, so that every
issue's figures are read the same way:

* ``name``, ``engine`` (``reference``: the eager :class:`~personalive_trt.runtime.reference_loop.Animator`; ``runtime``:
  :class:`~personalive_trt.runtime.StreamRuntime`; the original's offline loop, one pass over the whole sample
  clip as ``bench --mode offline`` runs it (:mod:`.offline`; window 4 whatever ``--window``; ``calls``: its
  windows; ``frames``, ``windows`` and ``keyframe_banks`` added): ``offline``, its reference loop
  :class:`~personalive_trt.runtime.offline_loop.OfflineAnimator` (``bench --mode offline --reference-loop``),
  and ``offline_runtime``, :class:`~personalive_trt.runtime.offline_stream.OfflineStreamRuntime`, what
  ``run --mode offline`` runs by default), ``device``, ``dtype``, ``backend``, ``vae``, ``compile``
  (torch.compile of the per-step networks, :mod:`personalive_trt.runtime.compile`), ``graphs``, ``keyframes``,
  ``resolution``, ``window``, ``weights``, ``calls``;
* ``status``: ``ok``, ``failed`` (``error`` says why; the matrix goes on) or ``skipped`` (``error`` says why,
  e.g. CUDA graphs on a CPU);
* ``step_ms`` {p50, p95, p99, mean, min, max}: device time per call (``step_clock``: ``cuda_events`` on the
  runtime's stream around each ``submit``'s work, see :class:`~.session.WorkStart`; ``perf_counter`` on CPU
  and for the reference, which is synchronous); ``host_staging_ms``: ``submit``'s host part before its work
  (runtime only, else null); ``chunk_latency_ms``: submit to frames on the host, one call in flight;
* ``fps``: pipelined throughput (runtime on CUDA, ``throughput_mode: pipelined``) or ``window / mean step``;
  ``per_frame_ms``: step mean / window (offline: the pass's summed window times / its frames);
* ``ratio_to_reference``: the reference variant's step p50 / this variant's step p50, the reference with the
  same keyframes measured in the same process (> 1: faster than the reference; null without one); for the
  offline variants ``reference_k0``'s ``per_frame_ms`` / theirs (< 1: the offline mode costs more per frame;
  the inverse of the offline / stream ratio of benchmarks/RESULTS.md, against the reference loop);
* ``flops_per_step`` (``flops_source``): the full-size table at 512 / window 4, else counted once per keyframe
  count by the eager runtime (FlopCounterMode); ``tflops_achieved`` = FLOPs / step p50;
* ``peak_memory_bytes``: CUDA: ``max_memory_allocated`` since the variant started (the resident weights
  included); CPU: the process's peak RSS so far (``peak_memory_kind`` says which);
* ``stages_ms``: the per-network split (p50 per network, ``glue``) of the eager runtime variants, null for
  the others (a replayed graph has no per-network boundaries); ``setup_s``: runtime construction, graph
  capture included; ``wall_s``: the whole variant.
* ``compile_s`` (compiled variants, else null): ``{"cold": report, "warm": report}``, each report
  :meth:`~personalive_trt.runtime.StreamRuntime.compile_report` (seconds per network: its warm-up calls,
  tracing and compiling or loading from the cache included; ``total``). Cold: this process, a new empty
  cache folder, ``torch.compiler.reset()`` first (inductor's in-process kernel caches may still shorten it);
  warm: a fresh process (``--compile-probe``) over the folder the cold start filled. The compiled variant
  compiles every bank length its keyframes need (k0: one; k3: four).

The file is rewritten after every variant, so a run stopped by a timeout leaves the variants it finished.
Broad ``except Exception`` per variant on purpose: this is the check's harness, whose job is to record a
failure (type, message, traceback in the log) and measure the next variant.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

SCHEMA = 1
VARIANT_FIELDS = (
    "name", "engine", "device", "dtype", "backend", "vae", "compile", "graphs", "keyframes", "resolution", "window",
    "weights", "calls", "status", "error", "fps", "throughput_mode", "step_ms", "step_clock", "host_staging_ms",
    "chunk_latency_ms", "ratio_to_reference", "flops_per_step", "flops_source", "tflops_achieved",
    "peak_memory_bytes", "peak_memory_kind", "stages_ms", "setup_s", "wall_s", "compile_s", "per_frame_ms",
)


@dataclass(frozen=True)
class Variant:
    name: str
    engine: str  # "reference" (eager Animator), "runtime" (StreamRuntime), "offline" (OfflineAnimator) or
    # "offline_runtime" (OfflineStreamRuntime)
    graphs: bool = False
    keyframes: int = 0
    compile: bool = False


#: The device matrix (full-size weights, fp16, 512, window 4, full VAE), in the order it runs.
VARIANTS = (
    Variant("reference_k0", "reference", keyframes=0),
    Variant("runtime_eager_k0", "runtime", graphs=False, keyframes=0),
    Variant("runtime_graphs_k0", "runtime", graphs=True, keyframes=0),
    Variant("offline_reference", "offline"),
    Variant("offline_runtime_graphs", "offline_runtime", graphs=True),
    Variant("offline_runtime_eager", "offline_runtime", graphs=False),
    Variant("reference_k3", "reference", keyframes=3),
    Variant("runtime_eager_k3", "runtime", graphs=False, keyframes=3),
    Variant("runtime_graphs_k3", "runtime", graphs=True, keyframes=3),
    Variant("runtime_graphs_compile_k0", "runtime", graphs=True, keyframes=0, compile=True),
    Variant("runtime_graphs_compile_k3", "runtime", graphs=True, keyframes=3, compile=True),
)
#: The engines of the offline variants (one pass over the sample clip, per-frame figures).
OFFLINE_ENGINES = ("offline", "offline_runtime")
#: The compiled variants' warm start (a fresh process) must finish within this many seconds.
WARM_PROBE_TIMEOUT_S = 600
#: ``--cpu``: the smoke subset (2 CPU cores: a few calls each; CUDA graphs have no CPU counterpart).
CPU_SMOKE = ("reference_k0", "runtime_eager_k0", "runtime_eager_k3")
DEVICE_DEFAULTS = {"weights": "synthetic:full:device", "resolution": 512, "window": 4, "calls": 20, "warmup": 3}
CPU_DEFAULTS = {"weights": "synthetic:tiny:device", "resolution": 128, "window": 4, "calls": 1, "warmup": 0}


def variant_record(variant: Variant, **fields) -> dict:
    """A variant object with every field of the schema (``None`` where not measured)."""
    record = dict.fromkeys(VARIANT_FIELDS)
    record.update(name=variant.name, engine=variant.engine, graphs=variant.graphs, keyframes=variant.keyframes,
                  compile=variant.compile)
    record.update(fields)
    return record


def run_matrix(out: Path, variants: tuple[Variant, ...], *, device: str = "auto", dtype: str = "auto",
               weights: str, resolution: int, window: int, calls: int, warmup: int, vae: str = "full",
               seed: int = 42, log=None) -> dict:
    """Measure ``variants`` (see the module docstring); writes ``out`` after each one and returns the document."""
    import torch

    from personalive_trt.bench.options import BenchOptions, stream_config
    from personalive_trt.bench.session import sample_inputs
    from personalive_trt.bench.timing import device_name
    from personalive_trt.devices import resolve_device
    from personalive_trt.models.weights import load_models

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    torch_device, torch_dtype = resolve_device(device, dtype, backend="torch")
    doc = {"schema": SCHEMA, "command": " ".join(sys.argv), "device": device_name(torch_device),
           "torch": torch.__version__, "cuda": torch.version.cuda, "weights": weights,
           "dtype": str(torch_dtype).removeprefix("torch."), "resolution": resolution, "window": window,
           "vae": vae, "calls": calls, "warmup": warmup, "variants": [], "failed": []}
    start = time.perf_counter()
    models = load_models(weights, device=torch_device, dtype=torch_dtype, vae=vae)
    if torch_device.type == "cuda":
        torch.cuda.synchronize(torch_device)
    doc["weights_s"] = round(time.perf_counter() - start, 3)
    doc["weights_source"] = models.source
    log(f"matrix: {models.source} on {torch_device} in {doc['weights_s']:.1f} s")
    reference, chunks = sample_inputs(resolution, window)
    common = {"device": doc["device"], "dtype": doc["dtype"], "backend": "torch", "vae": vae,
              "resolution": resolution, "window": window, "weights": weights, "calls": calls}
    counted: dict[int, tuple[int, str]] = {}  # keyframes -> (FLOPs per step, source), from the eager runtime
    for variant in variants:
        begun = time.perf_counter()
        if variant.graphs and torch_device.type != "cuda":
            record = variant_record(variant, **common, status="skipped", error="CUDA graphs need a CUDA device")
        else:
            config = stream_config(BenchOptions(keyframes=variant.keyframes, resolution=resolution, window=window,
                                                vae=vae))
            try:
                log(f"matrix: {variant.name}")
                if variant.engine in OFFLINE_ENGINES:
                    measured = _measure_offline(variant, models, torch_device, resolution, vae, warmup, seed)
                    record = variant_record(variant, **{**common, "window": 4, **measured}, status="ok")
                else:
                    measured = _measure(variant, models, config, torch_device, reference, chunks, calls, warmup,
                                        seed, counted, weights)
                    record = variant_record(variant, **common, status="ok", **measured)
            except Exception as exc:  # noqa: BLE001 -- recorded, and the next variant runs (module docstring)
                traceback.print_exc(file=sys.stderr)
                record = variant_record(variant, **common, status="failed",
                                        error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
            finally:
                gc.collect()
                if torch_device.type == "cuda":
                    torch.cuda.empty_cache()
        record["wall_s"] = round(time.perf_counter() - begun, 3)
        doc["variants"].append(record)
        if record["status"] == "failed":
            doc["failed"].append(variant.name)
        _derive(doc["variants"], counted)
        _write(out, doc)
        log(f"matrix: {variant.name}: {record['status']}"
            + (f", step p50 {record['step_ms']['p50']:.2f} ms, {record['fps']:.2f} fps" if record["step_ms"] else "")
            + (f" ({record['error']})" if record["error"] else ""))
    return doc


def _measure(variant: Variant, models, config, device, reference, chunks, calls: int, warmup: int, seed: int,
             counted: dict, weights: str) -> dict:
    import torch

    from personalive_trt.bench.benchmark import stage_breakdown
    from personalive_trt.bench.flops import is_full_size
    from personalive_trt.bench.session import fuse_timed, run_session
    from personalive_trt.bench.timing import percentiles
    from personalive_trt.shapes import StreamShapes

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    setup = time.perf_counter()
    with torch.no_grad():
        engine, clock, probe, cache = _open_variant(variant, models, config, device, seed)
        clock.sync()
        setup_s = time.perf_counter() - setup
        fuse_timed(engine, reference, clock)  # cold: lazy initialisation, discarded
        for i in range(warmup):
            engine.step(chunks[i % len(chunks)])
        clock.sync()
        full_table = (is_full_size(StreamShapes.from_unet_config(config, models.denoising_unet.config))
                      and config.resolution == 512 and config.window == 4)
        count = probe is not None and not full_table and variant.keyframes not in counted
        session_args = dict(pipelined=cuda and variant.engine == "runtime")
        if probe is not None:
            with probe:
                session = run_session(engine, reference, chunks, variant.keyframes, calls, clock, probe,
                                      count_flops=count, **session_args)
        else:
            session = run_session(engine, reference, chunks, variant.keyframes, calls, clock, **session_args)
    if count and probe.flops:
        counted[variant.keyframes] = (sum(probe.flops.values()),
                                      "counted (FlopCounterMode, one eager runtime call of the measured kind)")
    step = percentiles(session.step_ms)
    peak, kind = _peak_memory(device)
    stages = None
    if probe is not None:
        stages = stage_breakdown(probe, session)
    compile_s = None
    if variant.compile:
        compile_s = {"cold": engine.compile_report(), "warm": _warm_probe(weights, models, config, cache.folder())}
    del engine
    return {
        "compile_s": compile_s,
        "fps": round(session.fps if session.fps is not None else config.window * 1e3 / step["mean"], 6),
        "throughput_mode": "pipelined" if session.fps is not None else "sequential",
        "step_ms": step,
        "per_frame_ms": round(step["mean"] / config.window, 3),
        "step_clock": "cuda_events" if cuda and variant.engine == "runtime" else
                      ("cuda_events_around_step" if cuda else "perf_counter"),
        "host_staging_ms": percentiles(session.host_staging_ms) if session.host_staging_ms else None,
        "chunk_latency_ms": percentiles(session.chunk_latency_ms),
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": kind,
        "stages_ms": stages,
        "setup_s": round(setup_s, 3),
        "measured_keyframes": session.keyframes,
        "full_size_table": full_table,
    }


def _measure_offline(variant: Variant, models, device, resolution: int, vae: str, warmup: int, seed: int) -> dict:
    """An offline variant: one pass over the whole sample clip after ``warmup`` discarded windows."""
    import torch

    from personalive_trt.bench.offline import (loop_clock, measure_offline, open_loop, open_offline_networks,
                                               sample_offline_inputs)
    from personalive_trt.runtime.offline_loop import offline_config

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    config = offline_config(resolution=resolution, vae=vae)
    reference, clip = sample_offline_inputs(config, None)
    reference_loop = variant.engine == "offline"
    setup = time.perf_counter()
    with torch.no_grad():
        networks = open_offline_networks(models, config, "on" if variant.compile else "off", reference_loop)
        loop = open_loop(networks, config, clip.frames, seed, reference_loop, variant.graphs)
        clock = loop_clock(loop, device)
        clock.sync()
        setup_s = time.perf_counter() - setup
        figures = measure_offline(loop, reference, clip, warmup, 1, clock, lambda line: None)
    del loop
    peak, kind = _peak_memory(device)
    return {"fps": figures["fps"], "throughput_mode": "sequential", "step_ms": figures["step_ms"],
            "per_frame_ms": figures["per_frame_ms"], "step_clock": figures["step_clock"], "calls": figures["windows"],
            "frames": figures["frames"], "windows": figures["windows"], "keyframe_banks": figures["keyframe_banks"],
            "peak_memory_bytes": int(peak), "peak_memory_kind": kind, "setup_s": round(setup_s, 3)}


def _peak_memory(device) -> tuple[int, str]:
    """CUDA: ``max_memory_allocated`` since the variant reset it; CPU: the process's peak RSS so far."""
    import torch

    from personalive_trt.bench.timing import host_peak_rss_mb

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    return int((host_peak_rss_mb() or 0) * 2**20), "host_peak_rss_process"


def _open_variant(variant: Variant, models, config, device, seed: int):
    """The loop a variant measures, its clock, a per-network probe when it runs eagerly (else None) and, for a
    compiled variant, the options of its fresh compile cache (else None)."""
    import torch

    from personalive_trt.bench.timing import Clock, StageProbe
    from personalive_trt.runtime.reference_loop import Animator
    from personalive_trt.runtime.stream import StreamRuntime

    if variant.engine == "reference":
        return Animator(models, config, seed=seed), Clock(device), None, None
    cache = None
    if variant.compile:
        import tempfile

        from personalive_trt.runtime.compile import CompileOptions

        torch.compiler.reset()
        cache = CompileOptions(cache_dir=Path(tempfile.mkdtemp(prefix="personalive-compile-")))
    engine = StreamRuntime.from_models(models, config, backend="torch", seed=seed,
                                       graphs=True if variant.graphs else False, compile=cache or False)
    clock = Clock(device, engine.stream)
    return engine, clock, None if engine.use_graphs else StageProbe(engine.nets, clock), cache


def _warm_probe(weights: str, models, config, folder: Path) -> dict:
    """The compile report of a fresh process that compiles ``config`` over the cache ``folder`` (warm start)."""
    import dataclasses
    import subprocess

    command = [sys.executable, "-m", "personalive_trt.bench.matrix", "--compile-probe", str(folder),
               "--config-json", json.dumps(dataclasses.asdict(config)), "--weights", weights,
               "--device", str(models.device), "--dtype", str(models.dtype).removeprefix("torch.")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=WARM_PROBE_TIMEOUT_S, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(f"warm compile probe exited {result.returncode}: {tail[-1] if tail else 'no output'}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compile_probe(folder: Path, config_json: str, weights: str, device: str, dtype: str) -> dict:
    """``--compile-probe``: build the compiled runtime of ``config_json`` over ``folder``; its compile report."""
    import torch

    from personalive_trt.config import StreamConfig
    from personalive_trt.runtime import StreamRuntime
    from personalive_trt.runtime.compile import CompileOptions
    from personalive_trt.models.weights import load_models

    config = StreamConfig(**json.loads(config_json))
    models = load_models(weights, device=device, dtype=getattr(torch, dtype), vae=config.vae)
    runtime = StreamRuntime.from_models(models, config, compile=CompileOptions(cache_dir=folder))
    return runtime.compile_report()


def _derive(records: list[dict], counted: dict) -> None:
    """Ratios to the reference with the same keyframes, FLOPs and achieved TFLOP/s (re-derived after each variant)."""
    from personalive_trt.bench.flops import flops_json_path, reference_flops

    references = [r for r in records if r["engine"] == "reference" and r["status"] == "ok"]
    reference_p50 = {r["keyframes"]: r["step_ms"]["p50"] for r in references}
    reference_frame = {r["keyframes"]: r["per_frame_ms"] for r in references}
    for record in records:
        if record["status"] != "ok":
            continue
        if record["engine"] in OFFLINE_ENGINES:  # per frame: its windows differ (warm-up, keyframes); no FLOPs
            ref = reference_frame.get(0)
            record["ratio_to_reference"] = round(ref / record["per_frame_ms"], 4) if ref else None
            continue
        p50 = record["step_ms"]["p50"]
        ref = reference_p50.get(record["keyframes"])
        record["ratio_to_reference"] = round(ref / p50, 4) if ref and p50 > 0 else None
        flops = None
        if record.get("full_size_table") and record["vae"] == "full":
            flops = (sum(reference_flops(record["keyframes"]).values()), f"reference_json ({flops_json_path()})")
        elif record["keyframes"] in counted:
            flops = counted[record["keyframes"]]
        if flops is not None:
            record["flops_per_step"], record["flops_source"] = flops
            record["tflops_achieved"] = round(flops[0] / (p50 * 1e-3) / 1e12, 6) if p50 > 0 else None


def _write(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalive_trt.bench.matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="the matrix JSON to write (required)")
    parser.add_argument("--cpu", action="store_true", help=f"the CPU smoke subset ({', '.join(CPU_SMOKE)}) on "
                        f"the CPU with {CPU_DEFAULTS}")
    parser.add_argument("--variants", help="comma-separated variant names (default: all, or the smoke subset)")
    for key in DEVICE_DEFAULTS:
        parser.add_argument(f"--{key}", type=type(DEVICE_DEFAULTS[key]), default=None,
                            help=f"default {DEVICE_DEFAULTS[key]!r} (--cpu: {CPU_DEFAULTS[key]!r})")
    parser.add_argument("--vae", default="full")
    parser.add_argument("--compile-probe", type=Path, metavar="CACHE", help="(internal) print the compile report "
                        "of a compiled runtime over CACHE as JSON: the compiled variants' warm start")
    parser.add_argument("--config-json", help="(with --compile-probe) the StreamConfig fields")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float16")
    args = parser.parse_args(argv)
    if args.compile_probe is not None:
        if not args.config_json or not args.weights:
            parser.error("--compile-probe needs --config-json and --weights")
        print(json.dumps(compile_probe(args.compile_probe, args.config_json, args.weights, args.device, args.dtype)))
        return 0
    if args.out is None:
        parser.error("--out is required")
    defaults = CPU_DEFAULTS if args.cpu else DEVICE_DEFAULTS
    settings = {key: getattr(args, key) if getattr(args, key) is not None else value
                for key, value in defaults.items()}
    names = args.variants.split(",") if args.variants else (list(CPU_SMOKE) if args.cpu else [v.name for v in VARIANTS])
    by_name = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; expected {', '.join(by_name)}")
    doc = run_matrix(args.out, tuple(by_name[n] for n in names), device="cpu" if args.cpu else "auto",
                     vae=args.vae, **settings)
    for record in doc["variants"]:
        step = record["step_ms"]
        print(f"{record['name']:<20} {record['status']:<8} "
              + (f"step p50 {step['p50']:9.2f} ms  p95 {step['p95']:9.2f}  {record['fps']:8.2f} fps  "
                 f"ratio {record['ratio_to_reference']}  TFLOP/s {record['tflops_achieved']}  "
                 f"peak {record['peak_memory_bytes'] / 2**30:.2f} GiB" if step else (record["error"] or "")))
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
