"""TEST DOUBLE -- NOT TensorRT. A CPU stand-in for the ``tensorrt`` Python module, for CI without GPU or TensorRT.

It implements exactly the TensorRT 10/11 names that ``personalive_trt.engines`` uses, with the same
call signatures and failure conventions (``False``/``None`` plus an ERROR on the logger), so that every line
of the TensorRT path runs on CPU. It proves that our code calls the API in the right order with the right
arguments; it proves nothing about TensorRT itself (kernels, fp16 numerics, real shape inference, memory).

* Flavour: ``TENSORRT_STUB_FLAVOUR=10`` (default) has ``BuilderFlag.FP16`` and weakly typed networks unless
  ``STRONGLY_TYPED`` is passed; ``=11`` has no precision flags and every network is strongly typed (the flag
  is accepted and ignored, as in TensorRT 11). The flavour is read at import: re-import to switch.
* Recording: each ``build_serialized_network`` appends a :class:`BuildRecord` (network flags, typing, config
  flags, memory pools, profiles, optimisation level, timing cache given) to :data:`stub_builds`. Set
  :data:`stub_fail_next_build` (or :data:`stub_fail_next_execution`) to a message to make the next build
  (or ``execute_async_v3``) fail with that logged ERROR. Set :data:`stub_wrong_outputs` to a factor to make every
  execution return its outputs scaled by it (an engine that computes something else without raising: what the
  self-check must catch).
* "Serialization": a stub engine is ``MAGIC + header JSON (version, I/O tensors, profile) + ONNX bytes``;
  a different flavour's engine is refused like TensorRT refuses another version's plan.
* "Execution": ``execute_async_v3`` reads the inputs from the bound *host* addresses (ctypes), runs the
  ONNX graph with onnxruntime on CPU and writes the results to the bound output addresses. Output shapes
  (``IExecutionContext.get_tensor_shape``) come from a run on zeros of the set input shapes. Streams are
  plain integers (0 on CPU). The FP16 flag does not change the numerics here: ORT runs the graph's types.
  :data:`EXECUTES_ON_HOST` says so explicitly: only this stand-in may be handed host pointers.
* Activation memory, as TensorRT >= 10.1 manages it: ``create_execution_context(strategy)`` with
  ``ExecutionContextAllocationStrategy``; ``STATIC`` (the default) gives the context memory of its own,
  ``USER_MANAGED`` none until ``set_device_memory(ptr, size)`` with at least ``engine.device_memory_size_v2``
  bytes. Executing without it fails like TensorRT (logged ERROR, ``False``). Every execution scribbles
  over that memory (:data:`SCRATCH_PATTERN`), so memory shared with a live tensor shows up as corrupt data.
* Rebinding: every ``set_tensor_address``/``set_input_shape`` after a context's first execution is recorded
  in ``context.rebound`` (name, old, new). A CUDA graph captured around ``execute_async_v3`` keeps using
  what the context held at capture, so the tests require this list to stay empty.
"""
from __future__ import annotations

import ctypes
import enum
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime

STUB = True  # test double marker
EXECUTES_ON_HOST = True  # engines read and write host memory: the only "tensorrt" that may take CPU tensors
FLAVOUR = int(os.environ.get("TENSORRT_STUB_FLAVOUR", "10"))
if FLAVOUR not in (10, 11):
    raise ImportError(f"tensorrt stand-in: TENSORRT_STUB_FLAVOUR must be 10 or 11, got {FLAVOUR}")
__version__ = f"{FLAVOUR}.0.0+stub"
_MAGIC = b"TRTSTUB\0"

stub_builds: list["BuildRecord"] = []
stub_fail_next_build: str | None = None
stub_fail_next_execution: str | None = None
stub_wrong_outputs: float | None = None  # every execution's float outputs times this factor (a wrong engine)
SCRATCH_PATTERN = 0xA5  # what an execution leaves in the context's activation memory


# ---- enums (values are arbitrary; code must use the names) ---------------------------------------------

class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


if FLAVOUR == 10:
    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0  # deprecated and ignored in 10
        STRONGLY_TYPED = 1

    class BuilderFlag(enum.IntEnum):
        FP16 = 0
        INT8 = 1
        DEBUG = 2
        GPU_FALLBACK = 3
        REFIT = 4
        DISABLE_TIMING_CACHE = 5
        TF32 = 6
        SPARSE_WEIGHTS = 7
        OBEY_PRECISION_CONSTRAINTS = 8
        PREFER_PRECISION_CONSTRAINTS = 9
        DIRECT_IO = 10
        BF16 = 11
        FP8 = 12
else:
    class NetworkDefinitionCreationFlag(enum.IntEnum):  # type: ignore[no-redef]
        STRONGLY_TYPED = 0  # deprecated in 11: always on, accepted and ignored

    class BuilderFlag(enum.IntEnum):  # type: ignore[no-redef]  # no precision flags in 11
        DEBUG = 0
        GPU_FALLBACK = 1
        REFIT = 2
        DISABLE_TIMING_CACHE = 3
        TF32 = 4
        SPARSE_WEIGHTS = 5


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    """Stand-in of ``tensorrt.ILogger``: subclasses call ``ILogger.__init__(self)`` and implement ``log``."""

    Severity = _Severity
    INTERNAL_ERROR = _Severity.INTERNAL_ERROR
    ERROR = _Severity.ERROR
    WARNING = _Severity.WARNING
    INFO = _Severity.INFO
    VERBOSE = _Severity.VERBOSE

    def __init__(self) -> None:
        pass

    def log(self, severity: _Severity, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    """Stand-in of ``tensorrt.Logger``: prints messages at or above ``min_severity`` to stderr."""

    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: _Severity, msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[tensorrt stand-in] {severity.name}: {msg}", file=sys.stderr)


class IHostMemory(bytes):
    """Stand-in of ``tensorrt.IHostMemory``: supports the buffer protocol (here by being ``bytes``)."""

    @property
    def nbytes(self) -> int:
        return len(self)


# ---- network and parser ---------------------------------------------------------------------------------

_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
                onnx.TensorProto.INT32: DataType.INT32, onnx.TensorProto.INT64: DataType.INT64,
                onnx.TensorProto.BOOL: DataType.BOOL, onnx.TensorProto.UINT8: DataType.UINT8,
                onnx.TensorProto.INT8: DataType.INT8, onnx.TensorProto.BFLOAT16: DataType.BF16}
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32,
          DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT8: np.int8}


@dataclass
class ITensor:
    """Stand-in of a network ``ITensor``: ``shape`` has -1 for dynamic axes."""

    name: str
    dtype: DataType
    shape: tuple[int, ...]


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        strong_bit = 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self.strongly_typed = FLAVOUR == 11 or bool(flags & strong_bit)
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self.onnx_bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class _ParserError:
    def __init__(self, message: str) -> None:
        self._message = message

    def desc(self) -> str:
        return self._message

    def __str__(self) -> str:
        return f"In node -1 (stand-in parser): {self._message}"


class OnnxParser:
    """Stand-in of ``tensorrt.OnnxParser``: loads the model with ``onnx`` and describes its I/O."""

    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network, self.logger, self._errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        try:
            proto = onnx.load(model)  # with its external data, like TensorRT's parser
            onnx.checker.check_model(proto)
        except Exception as exc:  # noqa: BLE001 -- the stand-in reports any load failure as a parser error
            self._errors.append(_ParserError(f"failed to parse ONNX model {model}: {exc}"))
            return False
        initializers = {t.name for t in proto.graph.initializer}

        def describe(value: onnx.ValueInfoProto) -> ITensor:
            tensor_type = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
            return ITensor(value.name, _ONNX_TO_TRT[tensor_type.elem_type], dims)

        self.network._inputs = [describe(v) for v in proto.graph.input if v.name not in initializers]
        self.network._outputs = [describe(v) for v in proto.graph.output]
        self.network.onnx_bytes = proto.SerializeToString()
        return True


# ---- builder ----------------------------------------------------------------------------------------------

class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 -- TensorRT's names
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self.shapes[input])


class ITimingCache:
    """Stand-in timing cache: a list of entry names; serializes as a tagged JSON blob."""

    _TAG = f"stub-timing-cache-v{FLAVOUR}\n".encode()

    def __init__(self, entries: list[str]) -> None:
        self.entries = list(entries)

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._TAG + json.dumps(self.entries).encode())


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()
        self.memory_pools: dict[MemoryPoolType, int] = {}
        self.builder_optimization_level = 3
        self.profiles: list[IOptimizationProfile] = []
        self.timing_cache: ITimingCache | None = None
        self.timing_cache_given: list[str] | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.memory_pools[MemoryPoolType(pool)] = int(pool_size)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        for lo, opt, hi in profile.shapes.values():
            if not (len(lo) == len(opt) == len(hi)) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache([])
        if not data.startswith(ITimingCache._TAG):
            return None
        return ITimingCache(json.loads(data[len(ITimingCache._TAG):]))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        self.timing_cache_given = list(cache.entries)
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


@dataclass
class BuildRecord:
    """What one ``build_serialized_network`` call was asked (stand-in bookkeeping for tests)."""

    network_flags: int
    strongly_typed: bool
    builder_flags: set[str]
    memory_pools: dict[str, int]
    profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]
    optimization_level: int
    timing_cache_given: list[str] | None
    input_dtypes: dict[str, str] = field(default_factory=dict)


class Builder:
    """Stand-in of ``tensorrt.Builder``."""

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        global stub_fail_next_build
        stub_builds.append(BuildRecord(
            network_flags=network.flags, strongly_typed=network.strongly_typed,
            builder_flags={f.name for f in config.flags},
            memory_pools={p.name: v for p, v in config.memory_pools.items()},
            profiles=[dict(p.shapes) for p in config.profiles], optimization_level=config.builder_optimization_level,
            timing_cache_given=config.timing_cache_given,
            input_dtypes={t.name: t.dtype.name for t in network._inputs}))
        if stub_fail_next_build:
            message, stub_fail_next_build = stub_fail_next_build, None
            self.logger.log(_Severity.ERROR, message)
            return None
        if len(config.profiles) != 1:
            self.logger.log(_Severity.ERROR, f"stand-in supports exactly one optimization profile, got "
                            f"{len(config.profiles)}")
            return None
        profile = config.profiles[0].shapes
        for tensor in network._inputs:
            if tensor.name not in profile:
                self.logger.log(_Severity.ERROR, f"{tensor.name}: no optimization profile shape")
                return None
            for bound in profile[tensor.name]:
                if len(bound) != len(tensor.shape) or any(d >= 0 and d != b for d, b in zip(tensor.shape, bound)):
                    self.logger.log(_Severity.ERROR, f"{tensor.name}: profile {bound} does not fit {tensor.shape}")
                    return None
        if config.timing_cache is not None:
            config.timing_cache.entries.append(f"tactics-{len(network.onnx_bytes)}-{len(stub_builds)}")
        header = {
            "flavour": FLAVOUR,
            "version": __version__,
            "io": [[t.name, "INPUT", t.dtype.name, list(t.shape)] for t in network._inputs]
                  + [[t.name, "OUTPUT", t.dtype.name, list(t.shape)] for t in network._outputs],
            "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
        }
        blob = json.dumps(header).encode()
        return IHostMemory(_MAGIC + struct.pack("<Q", len(blob)) + blob + network.onnx_bytes)


# ---- runtime ----------------------------------------------------------------------------------------------

class Runtime:
    """Stand-in of ``tensorrt.Runtime``."""

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> "ICudaEngine | None":
        data = bytes(serialized_engine)
        if not data.startswith(_MAGIC):
            self.logger.log(_Severity.ERROR, "IRuntime::deserializeCudaEngine: stand-in magic tag not found")
            return None
        (size,) = struct.unpack_from("<Q", data, len(_MAGIC))
        start = len(_MAGIC) + 8
        header = json.loads(data[start:start + size])
        if header["version"] != __version__:
            self.logger.log(_Severity.ERROR, f"IRuntime::deserializeCudaEngine: version tag mismatch: engine "
                            f"plan is {header['version']}, runtime is {__version__}")
            return None
        return ICudaEngine(header, data[start + size:], self.logger)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, logger: ILogger) -> None:
        self._io = [(name, TensorIOMode[mode], DataType[dtype], tuple(shape))
                    for name, mode, dtype, shape in header["io"]]
        self._by_name = {entry[0]: entry for entry in self._io}
        self._profile = {name: [tuple(s) for s in shapes] for name, shapes in header["profile"].items()}
        self.onnx_bytes = onnx_bytes
        self.logger = logger
        self._session: onnxruntime.InferenceSession | None = None  # shared by the contexts, made on first use
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    @property
    def device_memory_size_v2(self) -> int:
        return self._activation_bytes()

    def _activation_bytes(self) -> int:
        """Activation memory a context needs (stand-in: the bytes of every input at the profile maximum, 256-aligned)."""
        total = sum(int(np.prod(self._profile[name][2])) * np.dtype(_NUMPY[dtype]).itemsize
                    for name, mode, dtype, _ in self._io if mode == TensorIOMode.INPUT)
        return max(256, -(-total // 256) * 256)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._by_name[name][1] if name in self._by_name else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._by_name[name][2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._by_name[name][3]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return list(self._profile[name])

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy =
                                 ExecutionContextAllocationStrategy.STATIC) -> "IExecutionContext":
        return IExecutionContext(self, ExecutionContextAllocationStrategy(strategy))

    def session(self) -> onnxruntime.InferenceSession:
        if self._session is None:
            self._session = onnxruntime.InferenceSession(self.onnx_bytes, providers=["CPUExecutionProvider"])
        return self._session


class IExecutionContext:
    """Stand-in execution context: host addresses in, onnxruntime on CPU, host addresses out."""

    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy) -> None:
        self.engine = engine
        self.strategy = strategy
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        # Activation memory: STATIC contexts own theirs; USER_MANAGED ones get it from set_device_memory.
        size = engine._activation_bytes()
        self._own_memory = (ctypes.create_string_buffer(size)
                            if strategy != ExecutionContextAllocationStrategy.USER_MANAGED else None)
        self.device_memory: tuple[int, int] | None = (
            (ctypes.addressof(self._own_memory), size) if self._own_memory is not None else None)
        # stand-in bookkeeping: one entry per execute_async_v3; (name, old, new) per change after the first one
        self.calls: list[dict[str, Any]] = []
        self.rebound: list[tuple[str, Any, Any]] = []

    def _inputs(self) -> list[tuple]:
        return [entry for entry in self.engine._io if entry[1] == TensorIOMode.INPUT]

    def _error(self, message: str) -> bool:
        self.engine.logger.log(_Severity.ERROR, message)
        return False

    def set_device_memory(self, memory: int, size: int) -> None:
        """``setDeviceMemoryV2``: returns nothing; a bad argument is an ERROR on the logger, as in TensorRT."""
        needed = self.engine._activation_bytes()
        if not isinstance(memory, int) or memory == 0 or memory % 256:
            self._error(f"IExecutionContext::setDeviceMemoryV2: invalid (null or unaligned) memory address {memory!r}")
        elif size < needed:
            self._error(f"IExecutionContext::setDeviceMemoryV2: {size} bytes given, the engine needs {needed}")
        else:
            self.device_memory = (memory, size)

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(shape)
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return self._error(f"IExecutionContext::setInputShape: {name} is not an input tensor")
        lo, _, hi = self.engine._profile[name]
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return self._error(f"IExecutionContext::setInputShape: {name} shape {shape} is outside the "
                               f"optimization profile {lo}..{hi}")
        if self.calls:
            self.rebound.append((name, self._shapes.get(name), shape))
        self._shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine.get_tensor_mode(name) == TensorIOMode.NONE:
            return self._error(f"IExecutionContext::setTensorAddress: no tensor named {name}")
        if not isinstance(memory, int) or memory == 0:
            return self._error(f"IExecutionContext::setTensorAddress: invalid address for {name}")
        if self.calls:
            self.rebound.append((name, self._addresses.get(name), memory))
        self._addresses[name] = memory
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        mode = self.engine.get_tensor_mode(name)
        if mode == TensorIOMode.INPUT:
            return self._shapes.get(name, self.engine.get_tensor_shape(name))
        inputs = self._inputs()
        if any(entry[0] not in self._shapes for entry in inputs):
            return self.engine.get_tensor_shape(name)  # still has -1 dims
        key = tuple(self._shapes[entry[0]] for entry in inputs)
        known = self.engine._output_shapes
        if key not in known:  # the stand-in's "shape inference": a run on zeros
            session = self.engine.session()
            feeds = {entry[0]: np.zeros(self._shapes[entry[0]], _NUMPY[entry[2]]) for entry in inputs}
            results = session.run(None, feeds)
            known[key] = {o.name: tuple(r.shape) for o, r in zip(session.get_outputs(), results)}
        return known[key][name]

    def execute_async_v3(self, stream_handle: int) -> bool:
        global stub_fail_next_execution
        if stub_fail_next_execution:
            message, stub_fail_next_execution = stub_fail_next_execution, None
            return self._error(message)
        if not isinstance(stream_handle, int):
            return self._error(f"IExecutionContext::enqueueV3: stream handle must be an int, got {stream_handle!r}")
        if self.device_memory is None:
            return self._error("IExecutionContext::enqueueV3: the context was created with "
                               "ExecutionContextAllocationStrategy::kUSER_MANAGED and no device memory was set")
        feeds = {}
        for name, _, dtype, _ in self._inputs():
            if name not in self._shapes or name not in self._addresses:
                return self._error(f"IExecutionContext::enqueueV3: input {name} has no shape or address set")
            feeds[name] = _read(self._addresses[name], self._shapes[name], _NUMPY[dtype])
        outputs = [entry for entry in self.engine._io if entry[1] == TensorIOMode.OUTPUT]
        for name, *_ in outputs:
            if name not in self._addresses:
                return self._error(f"IExecutionContext::enqueueV3: output {name} has no address set")
        session = self.engine.session()
        results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        # The engine's activations live in the context's device memory: clobber it, as a real run would.
        ctypes.memset(self.device_memory[0], SCRATCH_PATTERN, self.device_memory[1])
        for name, _, dtype, _ in outputs:
            value = np.ascontiguousarray(results[name], dtype=_NUMPY[dtype])
            if stub_wrong_outputs is not None and value.dtype.kind == "f":
                value = np.ascontiguousarray(value * stub_wrong_outputs, dtype=value.dtype)
            if value.shape != self.get_tensor_shape(name):
                return self._error(f"IExecutionContext::enqueueV3: {name} came out {value.shape}")
            ctypes.memmove(self._addresses[name], value.ctypes.data, value.nbytes)
        self.calls.append({"stream": stream_handle, "shapes": dict(self._shapes), "addresses": dict(self._addresses)})
        return True


def _read(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Copy a C-contiguous host array out of raw memory (what the device would read from the bound address)."""
    count = int(np.prod(shape))
    raw = (ctypes.c_ubyte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()
