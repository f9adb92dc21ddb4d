"""Build TensorRT engines from the ONNX exports through TensorRT's Python API (TensorRT 10 and 11).

Precision and TensorRT versions:

* **Strongly typed by default.** The network is created with
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` and every tensor keeps the type the ONNX gives it, so
  an fp16 engine is built from the fp16 ONNX export -- the one whose ``keep_fp32`` parts (the specs' fp32
  islands: normalisations, softmax statistics, the keypoint head) are already float32 and stay float32.
* **TensorRT 10** still has weak typing: a normal network plus ``BuilderFlag.FP16`` lets TensorRT pick
  fp16 kernels for any layer, the fp32 islands included, from either export. That is opt-in only
  (``BuildOptions(strongly_typed=False)``), and the engine cache key records the typing, so a weakly
  typed engine is never served for a strongly typed request or the other way round.
* **TensorRT 11** removed every precision flag: networks are always strongly typed (the flag is still
  accepted there and ignored); asking it for weak typing is an error.

The mode is chosen by capability (``hasattr(trt.BuilderFlag, "FP16")``), not by parsing version
strings. A network that cannot take fp16 at all is kept whole in fp32 with a per-network precision
override (``build_engines(..., precision_overrides={"pose_guider": "fp32"})``).

Every failure raises :class:`~personalive_trt.engines.cache.EngineError` with TensorRT's own messages
(parser errors, builder log); nothing returns ``None`` or exits.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalive_trt.engines.backends import check_io_names, log, require_tensorrt, trt_logger, trt_to_torch_dtype
from personalive_trt.engines.cache import EngineCache, EngineError, EngineKey, GpuInfo, StaleEngineError, atomic_write
from personalive_trt.export.interface import NetworkSpec

PRECISIONS = ("fp16", "fp32")

Progress = Callable[[str], None]
OnnxPathFor = Callable[[NetworkSpec, str], "str | Path"]


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings. All of them change the engine, so they are part of its cache key.

    Args:
        workspace_bytes (`int`, *optional*): cap of TensorRT's workspace memory pool; default: TensorRT's
            (the whole device).
        optimization_level (`int`, *optional*): ``builder_optimization_level`` 0..5; default: TensorRT's (3).
            Lower builds faster and may run slower.
        strongly_typed (`bool`, *optional*, defaults to `True`): the ONNX's types decide every tensor's
            precision (the fp16 engine comes from the fp16 export). ``False`` asks for weak typing with the
            FP16 builder flag, which may run the spec's fp32 parts in fp16: TensorRT 10 only.
    """

    workspace_bytes: int | None = None
    optimization_level: int | None = None
    strongly_typed: bool = True

    def __post_init__(self) -> None:
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise ValueError(f"BuildOptions.workspace_bytes must be positive, got {self.workspace_bytes}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ValueError(f"BuildOptions.optimization_level must be 0..5, got {self.optimization_level}")
        if not isinstance(self.strongly_typed, bool):
            raise ValueError(f"BuildOptions.strongly_typed must be True or False, got {self.strongly_typed!r}")

    def key_fields(self, typing: str) -> dict[str, Any]:
        return {"typing": typing, "workspace_bytes": self.workspace_bytes,
                "optimization_level": self.optimization_level}


def typing_mode(trt: Any, strongly_typed: bool = True) -> str:
    """``"strong"`` (precision from the graph's types) or ``"weak"`` (FP16 builder flag, TensorRT 10 only)."""
    if not strongly_typed and not hasattr(trt.BuilderFlag, "FP16"):
        raise EngineError(f"TensorRT {trt.__version__} builds strongly typed networks only (it has no "
                          "BuilderFlag.FP16): leave BuildOptions.strongly_typed at True")
    return "strong" if strongly_typed else "weak"


def resolve_precision(spec: NetworkSpec, precision: str, overrides: Mapping[str, str] | None = None) -> str:
    """The precision of one network: an override by network name, else by component, else ``precision``."""
    overrides = overrides or {}
    chosen = overrides.get(spec.name, overrides.get(spec.component, precision))
    if chosen not in PRECISIONS:
        raise ValueError(f"{spec.name}: precision must be one of {PRECISIONS}, got {chosen!r}")
    return chosen


# ---- one engine -------------------------------------------------------------------------------------------

def build_serialized_engine(spec: NetworkSpec, onnx_path: str | Path, *, precision: str = "fp16",
                            options: BuildOptions = BuildOptions(), timing_cache: bytes | None = None
                            ) -> tuple[Any, bytes]:
    """Parse ``onnx_path`` and build an engine for ``spec``'s optimisation profile.

    Args:
        spec (`NetworkSpec`): names, dtypes and the profile (``spec.profile()``, one min/opt/max per input).
        onnx_path (`str | Path`): the export (external data next to it is found by the parser).
        precision (`str`, defaults to ``"fp16"``): ``"fp16"`` or ``"fp32"``.
        options (`BuildOptions`, *optional*): typing mode, workspace, optimisation level.
        timing_cache (`bytes`, *optional*): a serialized timing cache to start from (rejected ones are
            replaced by an empty cache, with a warning in the log).

    Returns:
        ``(plan, timing_cache)``: the serialized engine (a buffer: TensorRT's ``IHostMemory``) and the updated
        serialized timing cache.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{spec.name}: precision must be one of {PRECISIONS}, got {precision!r}")
    trt = require_tensorrt()
    logger = trt_logger(trt)
    mark = logger.count
    mode = typing_mode(trt, options.strongly_typed)

    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == "strong" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = " | ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors or logger.errors_since(mark)}")
    _check_network(trt, network, spec, precision, mode, str(onnx_path))

    config = builder.create_builder_config()
    if precision == "fp16" and mode == "weak":
        config.set_flag(trt.BuilderFlag.FP16)
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.profile().items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"{spec.name}: TensorRT rejected the optimisation profile {spec.profile()}: "
                          f"{logger.errors_since(mark)}")
    _use_timing_cache(config, timing_cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"{spec.name}: TensorRT failed to build the engine: {logger.errors_since(mark)}")
    return plan, bytes(memoryview(config.get_timing_cache().serialize()))


def _parser_error(error: Any) -> str:
    text = str(error).strip()
    return error.desc() if text.startswith("<") else text  # a bare object repr carries no message


def _use_timing_cache(config: Any, data: bytes | None) -> None:
    cache = config.create_timing_cache(data or b"")
    if cache is not None and config.set_timing_cache(cache, False):
        return
    # A cache from another GPU or TensorRT version (or a damaged file): start afresh, the build still works.
    log.warning("TensorRT rejected the saved timing cache; starting an empty one")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise EngineError("TensorRT rejected an empty timing cache")


def _check_network(trt: Any, network: Any, spec: NetworkSpec, precision: str, mode: str, source: str) -> None:
    """The parsed graph must have the spec's tensors, dynamic where the profile varies, in the right export."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    check_io_names(spec, source, [t.name for t in inputs], [t.name for t in outputs])
    dtypes = {}
    for tensor in inputs:
        want, shape = spec.input(tensor.name), tuple(tensor.shape)
        if len(shape) != len(want.min_shape):
            raise EngineError(f"{source}: input {tensor.name!r} has rank {len(shape)}, the spec {len(want.min_shape)}")
        for axis, (dim, lo, hi) in enumerate(zip(shape, want.min_shape, want.max_shape)):
            if dim >= 0 and (lo != hi or dim != lo):
                raise EngineError(f"{source}: input {tensor.name!r} axis {axis} is fixed to {dim} in the ONNX, the "
                                  f"spec needs {lo if lo == hi else f'{lo}..{hi}'}: re-export it")
        dtypes[tensor.name] = trt_to_torch_dtype(trt, tensor.dtype)
    # Which export (fp32 or fp16 dtypes) the file is; a strongly typed build takes its precision from it.
    exports = [p for p in PRECISIONS if all(dtypes[t.name] == t.export_dtype(p) for t in spec.inputs)]
    allowed = [precision] if mode == "strong" or precision == "fp32" else list(PRECISIONS)
    if not set(exports) & set(allowed):
        found = {name: str(dtype).replace("torch.", "") for name, dtype in dtypes.items()}
        why = (f"TensorRT {trt.__version__} builds this network strongly typed, so the precision comes from the "
               f"graph's types" if mode == "strong" else "an fp32 engine must not be built from an fp16 graph")
        raise EngineError(f"{source}: input dtypes {found} are not those of the {precision} export ({why}): "
                          f"build from the {precision} ONNX")


# ---- the cache in front of it ------------------------------------------------------------------------------

def engine_key(spec: NetworkSpec, onnx_path: str | Path, cache: EngineCache, *, precision: str,
               options: BuildOptions, gpu: GpuInfo, trt: Any) -> EngineKey:
    """The cache key of building ``spec`` from ``onnx_path`` with these settings on ``gpu``."""
    return EngineKey(network=spec.name, onnx_sha256=cache.onnx_digest(onnx_path), profile=spec.profile(),
                     precision=precision, tensorrt_version=trt.__version__, gpu=gpu,
                     builder=options.key_fields(typing_mode(trt, options.strongly_typed)))


def ensure_engine(spec: NetworkSpec, onnx_path: str | Path, cache: EngineCache | str | Path, *,
                  precision: str = "fp16", options: BuildOptions = BuildOptions(), allow_build: bool = True,
                  gpu: GpuInfo | None = None, progress: Progress | None = print) -> Path:
    """The engine of ``spec`` in ``cache``: reused when its key matches, else (re)built, else refused.

    Args:
        spec (`NetworkSpec`): the network.
        onnx_path (`str | Path`): its export in the precision's dtypes (a weakly typed TensorRT 10 build also
            takes the fp32 export for an fp16 engine).
        cache (`EngineCache | str | Path`): the engines folder.
        precision (`str`, defaults to ``"fp16"``): ``"fp16"`` or ``"fp32"``.
        options (`BuildOptions`, *optional*): builder settings.
        allow_build (`bool`, defaults to `True`): ``False`` raises :class:`StaleEngineError` (one line saying
            why) instead of building when there is no matching engine.
        gpu (`GpuInfo`, *optional*): defaults to :meth:`GpuInfo.target` (the current CUDA device).
        progress (`Callable[[str], None]`, *optional*, defaults to `print`): one line per step; ``None`` is quiet.

    Returns:
        The engine file's path.
    """
    return _ensure(spec, onnx_path, cache, precision=precision, options=options, allow_build=allow_build,
                   gpu=gpu, progress=progress)[0]


def _ensure(spec, onnx_path, cache, *, precision, options, allow_build, gpu, progress, step=""):
    if precision not in PRECISIONS:
        raise ValueError(f"{spec.name}: precision must be one of {PRECISIONS}, got {precision!r}")
    trt = require_tensorrt()
    cache = cache if isinstance(cache, EngineCache) else EngineCache(cache)
    gpu = gpu or GpuInfo.target(trt)
    say = progress or (lambda message: None)
    key = engine_key(spec, onnx_path, cache, precision=precision, options=options, gpu=gpu, trt=trt)
    reason = cache.stale_reason(key)
    if reason is None:
        path = cache.engine_path(key)
        say(f"{step}{spec.name}: up to date ({path.name})")
        return path, False
    if not allow_build:
        raise StaleEngineError(f"engine {spec.name!r} in {cache.folder} cannot be used ({reason}) and building is "
                               "off: build it first (personalive-trt build)")
    typing = key.builder["typing"]
    say(f"{step}{spec.name}: building {precision} engine ({typing}ly typed, TensorRT {trt.__version__}, "
        f"{gpu.name}; {reason}) ...")
    timing_path = cache.timing_cache_path(gpu, trt.__version__)
    start = time.perf_counter()
    plan, timing = build_serialized_engine(spec, onnx_path, precision=precision, options=options,
                                           timing_cache=timing_path.read_bytes() if timing_path.is_file() else None)
    seconds = time.perf_counter() - start
    atomic_write(timing_path, timing)
    path = cache.store(key, plan, build_seconds=seconds)
    say(f"{step}{spec.name}: built in {seconds:.1f} s ({path.stat().st_size / 2**20:.1f} MiB) -> {path}")
    return path, True


def build_engines(specs: Sequence[NetworkSpec], onnx_path: OnnxPathFor, cache_dir: str | Path, *,
                  precision: str = "fp16", precision_overrides: Mapping[str, str] | None = None,
                  options: BuildOptions = BuildOptions(), allow_build: bool = True, gpu: GpuInfo | None = None,
                  progress: Progress | None = print) -> dict[str, Path]:
    """Make sure every network has an up-to-date engine in ``cache_dir``; build the missing or stale ones.

    Args:
        specs (`Sequence[NetworkSpec]`): the networks, built in this order.
        onnx_path (`Callable[[NetworkSpec, str], Path]`): the ONNX file of a network in a precision
            (``"fp16"``/``"fp32"``), e.g. ``lambda spec, p: onnx_dir / f"{spec.name}.{p}.onnx"``.
        cache_dir (`str | Path`): the engines folder (manifest and timing cache live there too).
        precision (`str`, defaults to ``"fp16"``): the default precision.
        precision_overrides (`Mapping[str, str]`, *optional*): per network name or component, e.g.
            ``{"pose_guider": "fp32"}`` to keep a sensitive network in fp32. Unknown names are an error.
        options, allow_build, gpu, progress: as in :func:`ensure_engine`.

    Returns:
        network name -> engine path.
    """
    trt = require_tensorrt()  # before the GPU query: "not installed" is the more useful first message
    overrides = dict(precision_overrides or {})
    known = {s.name for s in specs} | {s.component for s in specs}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"precision override for unknown network(s) {unknown}; networks are "
                         f"{sorted(s.name for s in specs)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    chosen = {spec.name: resolve_precision(spec, precision, overrides) for spec in specs}
    gpu = gpu or GpuInfo.target(trt)
    say = progress or (lambda message: None)
    start, built, paths = time.perf_counter(), 0, {}
    for i, spec in enumerate(specs, 1):
        path, was_built = _ensure(spec, Path(onnx_path(spec, chosen[spec.name])), cache_dir,
                                  precision=chosen[spec.name], options=options, allow_build=allow_build, gpu=gpu,
                                  progress=progress, step=f"[{i}/{len(specs)}] ")
        paths[spec.name] = path
        built += was_built
    say(f"{len(specs)} engines ready in {cache_dir} ({built} built, {len(specs) - built} up to date) "
        f"in {time.perf_counter() - start:.1f} s")
    return paths
