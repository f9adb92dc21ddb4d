"""The doctor's synthetic stream: a few calls of tiny weights through every path this machine can run.

Tiny synthetic weights (seed 0) at :data:`CONFIG` (64², window 1 on a CPU, 4 on a GPU): a reference fusion and
:data:`CALLS` calls, keyframes tested from the second call with threshold 0, so the second call takes a history
keyframe and the third writes its banks and runs with them (a forced keyframe: every path must take it in the
same call). Every path gets the same reference, driving frames and noise (:class:`StagedNoise`: drawn on the CPU,
copied into one device buffer that the runtime's noise hook reads, which CUDA graphs can capture), and its
frames (before quantisation) are compared call by call with the fp32 eager torch runtime on the CPU, the
trusted path, within its precision's tolerance (:data:`TOLERANCE`). Each path is timed: its setup (networks,
export, compile, graph capture) and the median call after the first.

Paths (:func:`plan`): torch eager fp32 on the CPU (the reference); on a GPU torch eager fp16, CUDA graphs fp16
(`run`'s default there) and ONNX Runtime's CUDA provider; ONNX Runtime on the CPU; the compiled path only
with ``compile=True`` or a warm compile cache for this configuration (a cold compile takes many minutes on a
CPU). A path that cannot run here is ``skipped`` with why; a path that fails is one line with the cause and the
option that avoids it. ONNX Runtime runs an export of the same tiny networks (unverified: the stream comparison
is its check), kept in ``work_dir`` when one is given so a second doctor run reuses it.
"""
from __future__ import annotations

import json

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from personalive_trt.config import LATENT_CHANNELS, StreamConfig
from personalive_trt.engines.checks import one_line, relative_error

CALLS = 3
#: Tolerances (max |frame - reference| / max |reference| per call, before quantisation). fp32 torch paths: the
#: parity stream's 1e-3 (tests/parity.py); ONNX Runtime: its 1e-2 (kernel order amplified by the random-weight
#: recurrence, shared README section 8); fp16 against the fp32 reference: 5e-2, the fp16 export tolerance of
#: the UNet (export/specs.py) -- not yet measured for a whole stream on a GPU.
TOLERANCE = {"torch fp32": 1e-3, "onnxruntime fp32": 1e-2, "fp16": 5e-2}
TINY_WEIGHTS = "synthetic:tiny"  # what Shared.models_on builds (seed 0)
SEED = 7


def doctor_config(device: torch.device) -> StreamConfig:
    return StreamConfig(resolution=64, window=4 if device.type == "cuda" else 1, keyframe_start=0,
                        keyframe_threshold=0.0)


@dataclass(frozen=True)
class PathPlan:
    """One path to run: how to open its loop, and what to say when it fails."""

    name: str
    device: torch.device
    dtype: torch.dtype
    tolerance: float
    fix: str  # the option that avoids this path
    open: Callable[["Shared", "StagedNoise"], object] = field(compare=False, repr=False)
    default: bool = False  # `run`'s default path on this machine


@dataclass
class PathResult:
    name: str
    status: str  # "ok", "failed", "skipped"
    detail: str = ""  # the cause (failed), or why it did not run (skipped)
    fix: str = ""
    default: bool = False
    error: float | None = None
    tolerance: float | None = None
    setup_s: float | None = None
    call_ms: float | None = None  # median over the calls after the first

    def line(self) -> str:
        mark = " (run's default here)" if self.default else ""
        if self.status == "ok":
            error = "" if self.error is None else f"max error {self.error:.1e} <= {self.tolerance:.0e}, "
            detail = f"{self.detail}, " if self.detail else ""
            return f"{self.name}{mark}: ok, {detail}{error}setup {self.setup_s:.1f} s, {self.call_ms:.0f} ms per call"
        if self.status == "skipped":
            return f"{self.name}: skipped ({self.detail})"
        return f"{self.name}{mark}: FAILED: {self.detail}" + (f"; avoid it with {self.fix}" if self.fix else "")

    def as_dict(self) -> dict:
        finite = self.error is None or math.isfinite(self.error)  # JSON has no inf: the line says it
        return dict(vars(self)) | {"error": self.error if finite else None, "line": self.line()}


class StagedNoise:
    """The diffusion noise of every path: drawn from a seeded CPU generator before each runtime call, copied into
    one device buffer; the runtime's noise hook copies from that buffer (a device copy: CUDA graphs capture it).

    Each call of the runtime draws noise once (the fusion its warm-up pile, a step its fresh latents), so
    :meth:`stage` before each of them gives every path the same numbers."""

    def __init__(self, config: StreamConfig, device: torch.device, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        frames = max(config.warmup_frames, config.window)  # the largest draw: StreamShapes.latent_chunk(frames)
        self.buffer = torch.zeros(LATENT_CHANNELS * frames * config.latent_size ** 2, device=device)

    def __call__(self, target: torch.Tensor) -> None:
        target.copy_(self.buffer[: target.numel()].view(target.shape))

    def stage(self, shape) -> None:
        self.buffer[: torch.Size(shape).numel()].copy_(torch.randn(shape, generator=self.generator).flatten())
        if self.buffer.is_cuda:
            torch.cuda.synchronize(self.buffer.device)  # the runtime's own stream must see it: doctor only


@dataclass
class Shared:
    """What every path reuses: the tiny models per (device, dtype), the ONNX export, the inputs."""

    config: StreamConfig
    frames: object  # (1 + CALLS * window, R, R, 3) uint8: the reference, then the driving frames
    work_dir: Path
    engines: Path | None = None
    compile: bool = False
    models: dict = field(default_factory=dict)

    def models_on(self, device: torch.device, dtype: torch.dtype):
        """The tiny synthetic models (seed 0) on ``device`` in ``dtype``, built once and copied for the others."""
        import copy

        from personalive_trt.models.weights import synthetic_models

        key = (str(device), dtype)
        if key not in self.models:
            cpu = self.models.get(("cpu", torch.float32))
            self.models[key] = (synthetic_models("tiny") if cpu is None else copy.deepcopy(cpu)).to(device, dtype)
        return self.models[key]


def drive(runtime, shared: Shared, noise: StagedNoise) -> tuple[list[torch.Tensor], list[int], list[float]]:
    """The stream: (float frames per call on the CPU, keyframes in effect after each call, seconds per call)."""
    cfg, shapes = runtime.config, runtime.shapes
    noise.stage(shapes.latent_chunk(cfg.warmup_frames))
    runtime.fuse_reference(shared.frames[0])
    frames, keyframes, seconds = [], [], []
    for call in range(CALLS):
        chunk = shared.frames[1 + call * cfg.window: 1 + (call + 1) * cfg.window]
        noise.stage(shapes.latent_chunk(cfg.window))
        start = time.perf_counter()
        frames.append(runtime.step_float(chunk).float().cpu())  # waits for the call: timed end to end
        seconds.append(time.perf_counter() - start)
        keyframes.append(runtime.keyframes)
    return frames, keyframes, seconds


def run_path(plan: PathPlan, shared: Shared, reference: tuple | None) -> tuple[PathResult, tuple | None]:
    """Open and drive one path; compare with ``reference`` (None: this is the reference). Never raises for the
    path's own failure: it is the result."""
    start = time.perf_counter()
    try:
        noise = StagedNoise(shared.config, plan.device, SEED)
        runtime = plan.open(shared, noise)
        setup = time.perf_counter() - start
        frames, keyframes, seconds = drive(runtime, shared, noise)
    except Exception as exc:  # noqa: BLE001 -- one line per failing path is the report's job
        return PathResult(plan.name, "failed", one_line(exc), plan.fix, plan.default), None
    call_ms = statistics.median(seconds[1:]) * 1e3
    result = PathResult(plan.name, "ok", default=plan.default, setup_s=setup, call_ms=call_ms,
                        tolerance=plan.tolerance if reference is not None else None)
    if keyframes[-1] < 1:
        result.status, result.detail = "failed", f"the forced keyframe was not taken (keyframes {keyframes})"
    if reference is not None:
        ref_frames, ref_keyframes = reference
        result.error = max(relative_error({"frames": a}, {"frames": b}) for a, b in zip(frames, ref_frames))
        if keyframes != ref_keyframes:
            result.status = "failed"
            result.detail = f"keyframes {keyframes} differ from the reference's {ref_keyframes}"
        elif result.error > plan.tolerance:
            result.status = "failed"
            result.detail = (f"frames differ from the fp32 eager reference by {result.error:.1e} "
                             f"(> {plan.tolerance:.0e} relative)")
    if result.status == "failed":
        result.fix = plan.fix
    return result, (frames, keyframes)


# ---- the paths ----------------------------------------------------------------------------------------------
def _torch_runtime(device: torch.device, dtype: torch.dtype, graphs: bool, compile_dir: Path | None = None):
    def open_runtime(shared: Shared, noise: StagedNoise):
        from personalive_trt.runtime import StreamRuntime
        from personalive_trt.runtime.compile import CompileOptions

        models = shared.models_on(device, dtype)
        options = CompileOptions(cache_dir=compile_dir) if compile_dir is not None else False
        return StreamRuntime.from_models(models, shared.config, graphs=graphs, compile=options, noise=noise)
    return open_runtime


def _onnx_runtime(device: torch.device):
    def open_runtime(shared: Shared, noise: StagedNoise):
        from personalive_trt.runtime import StreamRuntime
        from personalive_trt.runtime.open import open_networks

        export_tiny(shared)
        networks = open_networks("onnxruntime", config=shared.config, device=device, dtype=torch.float32,
                                 weights=TINY_WEIGHTS, engines=shared.work_dir)
        return StreamRuntime(networks, shared.config, noise=noise)
    return open_runtime


def source_digest() -> str:
    """A digest of the code an export comes from (the networks, their specs and shapes, the exporter): a cached
    export made by other code is made again, rather than compared with networks it no longer matches."""
    import hashlib

    import personalive_trt.export
    import personalive_trt.models

    root = Path(personalive_trt.models.__file__).parent.parent
    files = [*Path(personalive_trt.models.__file__).parent.rglob("*.py"),
             *Path(personalive_trt.export.__file__).parent.rglob("*.py"), root / "shapes.py", root / "config.py"]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def export_tiny(shared: Shared):
    """The tiny networks' fp32 ONNX export in ``shared.work_dir/onnx`` (reused when current), with the
    ``build.json`` that makes ``shared.work_dir`` an engines folder of :data:`TINY_WEIGHTS`, which
    :func:`~personalive_trt.runtime.open.open_networks` opens as `run --backend onnxruntime` would. Unverified:
    the doctor compares the whole stream instead (the tiny UNet's export misses its own tolerance at 64²)."""
    import dataclasses

    from personalive_trt.engines.folder import BuildError, BuildRecord, onnx_paths, weights_fingerprint, write_build
    from personalive_trt.export.onnx_export import export_all, read_manifest, versions
    from personalive_trt.shapes import StreamShapes

    models = shared.models_on(torch.device("cpu"), torch.float32)
    shapes = StreamShapes.from_unet_config(shared.config, models.denoising_unet.config)
    record = BuildRecord(weights=TINY_WEIGHTS, fingerprint=weights_fingerprint(TINY_WEIGHTS, 0, vae=shared.config.vae),
                         unet_config=json.loads(json.dumps(dict(models.denoising_unet.config), default=list)),
                         configs=[dataclasses.asdict(shared.config)], precisions=["fp32"], backend="onnxruntime",
                         vae=shared.config.vae, precision="fp32")
    fingerprint = f"doctor:synthetic:tiny:seed0:{sorted(versions().items())}:{source_digest()}"
    onnx_dir = shared.work_dir / "onnx"
    if (onnx_dir / "manifest.json").is_file() and read_manifest(onnx_dir).get("weights_fingerprint") == fingerprint:
        try:
            if all(p.is_file() for p in onnx_paths(shared.work_dir, shapes, "fp32").values()):
                write_build(shared.work_dir, record)
                return shapes
        except BuildError:
            pass  # an earlier export that stopped before every network: export again (this is the check)
    export_all(models, [shapes], onnx_dir, precisions=["fp32"], verify=False, fingerprint=fingerprint)
    write_build(shared.work_dir, record)
    return shapes


def _compiled_path(shared: Shared, device: torch.device, dtype: torch.dtype, graphs: bool, name: str,
                   ) -> PathPlan | PathResult:
    """The compiled path when ``shared.compile`` or its cache is warm; else why it is skipped."""
    from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR
    from personalive_trt.engines.networks import Networks
    from personalive_trt.runtime.compile import CACHE_SUBDIR, CompileError, CompileOptions, compile_is_warm, \
        require_compiler

    folder = Path(shared.engines or DEFAULT_ENGINES_DIR) / CACHE_SUBDIR
    try:
        require_compiler(device)
    except CompileError as exc:
        return PathResult(name, "failed" if shared.compile else "skipped", str(exc), "--compile off")
    tolerance = TOLERANCE["torch fp32"] if dtype == torch.float32 else TOLERANCE["fp16"]
    plan = PathPlan(name, device, dtype, tolerance, "--compile off", _torch_runtime(device, dtype, graphs, folder))
    if shared.compile:
        return plan
    networks = Networks.from_models(shared.models_on(device, dtype), shared.config)
    if compile_is_warm(networks, CompileOptions(cache_dir=folder)):
        return plan
    return PathResult(name, "skipped", f"no warm compile cache in {folder} for this configuration, and a cold "
                      "compile takes many minutes on a CPU (tens on 2 cores); --compile compiles it once there")


def plan(shared: Shared, cuda: bool, providers: list[str] | None) -> list[PathPlan | PathResult]:
    """Every path of the synthetic stream, in order (the reference first), or why a path is skipped.

    ``cuda``: torch sees a GPU; ``providers``: ONNX Runtime's providers (None: ONNX Runtime is not installed)."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda", torch.cuda.current_device()) if cuda else None
    fp32, fp16 = torch.float32, torch.float16
    plans: list[PathPlan | PathResult] = [
        PathPlan("torch eager fp32 (cpu)", cpu, fp32, 0.0, "", _torch_runtime(cpu, fp32, False), default=not cuda)]
    plans.append(_compiled_path(shared, cpu, fp32, False, "torch.compile fp32 (cpu)"))
    if providers is None:
        plans.append(PathResult("onnxruntime fp32 (cpu)", "skipped",
                                'ONNX Runtime is not installed: pip install "personalive-trt[onnx]"'))
    else:
        plans.append(PathPlan("onnxruntime fp32 (cpu)", cpu, fp32, TOLERANCE["onnxruntime fp32"], "--backend torch",
                              _onnx_runtime(cpu)))
    if not cuda:
        reason = f"no CUDA device visible to torch {torch.__version__}" + (
            "" if torch.version.cuda else " (a CPU build: install the CUDA build of torch)")
        for name in ("torch eager fp16 (cuda)", "CUDA graphs fp16 (cuda)", "onnxruntime fp32 (cuda)"):
            plans.append(PathResult(name, "skipped", reason))
        return plans
    plans.append(PathPlan("torch eager fp16 (cuda)", gpu, fp16, TOLERANCE["fp16"], "--dtype fp32",
                          _torch_runtime(gpu, fp16, False)))
    plans.append(PathPlan("CUDA graphs fp16 (cuda)", gpu, fp16, TOLERANCE["fp16"], "--cuda-graphs off",
                          _torch_runtime(gpu, fp16, True), default=True))
    plans.append(_compiled_path(shared, gpu, fp16, True, "torch.compile + CUDA graphs fp16 (cuda)"))
    if providers is not None and "CUDAExecutionProvider" in providers:
        plans.append(PathPlan("onnxruntime fp32 (cuda)", gpu, fp32, TOLERANCE["onnxruntime fp32"],
                              "--backend torch", _onnx_runtime(gpu)))
    else:
        plans.append(PathResult("onnxruntime fp32 (cuda)", "skipped", "ONNX Runtime has no CUDA provider here: "
                                'pip install "personalive-trt[gpu]" (onnxruntime-gpu)'))
    return plans


def run_paths(shared: Shared, cuda: bool, providers: list[str] | None,
              say: Callable[[str], None] = lambda line: None) -> list[PathResult]:
    """Plan and run every path; the first (fp32 eager on the CPU) is the reference of the others."""
    results, reference = [], None
    items = plan(shared, cuda, providers)
    for index, item in enumerate(items):
        if isinstance(item, PathResult):
            result = item
        else:
            say(f"running {item.name} ...")
            result, outcome = run_path(item, shared, reference)
            if reference is None and result.status != "ok":  # nothing else can be compared without it
                say(result.line())
                return [result, *(PathResult(getattr(i, "name"), "skipped", "the fp32 eager reference failed")
                                  for i in items[index + 1:])]
            reference = reference or outcome
        say(result.line())
        results.append(result)
    return results


def engines_path(engines_dir: Path, record, known: dict | None, cuda: bool) -> PathResult:
    """A built engines folder (the user's weights and shapes): every network on the known answers `build`
    stored (:mod:`personalive_trt.engines.known_answers`), timed; TensorRT on the GPU, ONNX Runtime on the GPU
    when it has a CUDA provider."""
    from personalive_trt.engines.folder import load_networks
    from personalive_trt.doctor.verdicts import rebuild_command
    from personalive_trt.engines.known_answers import NO_ANSWERS_LINE, check_known_answers

    name = f"{record.backend} engines ({engines_dir})"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    fix = f"`{rebuild_command(record, engines_dir)}`, or --backend torch"
    start = time.perf_counter()
    try:
        config = StreamConfig(**record.configs[0])
        networks = load_networks(engines_dir, record.backend, record.weights, config, device)
        setup = time.perf_counter() - start
        checks = check_known_answers(networks, engines_dir, known, what=record.backend)
    except Exception as exc:  # noqa: BLE001 -- one line per failing path
        return PathResult(name, "failed", one_line(exc), fix)
    if checks is None:
        return PathResult(name, "skipped", NO_ANSWERS_LINE.format(folder=engines_dir), setup_s=setup)
    failed = [c for c in checks if not c.ok]
    seconds = sum(c.seconds for c in checks)
    if failed:
        more = f" (and {len(failed) - 1} more network(s))" if len(failed) > 1 else ""
        return PathResult(name, "failed", failed[0].describe() + more, fix, setup_s=setup, call_ms=seconds * 1e3)
    return PathResult(name, "ok", f"{len(checks)} networks match the torch outputs stored by build",
                      setup_s=setup, call_ms=seconds * 1e3)
