"""One interface for running an exported network: a torch module, an ONNX Runtime session or a TensorRT engine.

Every backend follows the same contract (:class:`EngineBackend`), so the streaming runtime and
``personalive-trt run --backend`` never branch on which one runs:

* :meth:`~EngineBackend.allocate` creates each output buffer once, at the profile maximum of the
  network's :class:`~personalive_trt.export.interface.NetworkSpec`. Buffer addresses never change afterwards,
  which is what CUDA-graph capture needs.
* :meth:`~EngineBackend.infer` checks the inputs against the spec (names, dtype, device, shape inside the
  profile range; errors name the tensor and the allowed range), runs the network on the *real* shapes of
  this call (never over uninitialised memory at the profile maximum) and returns each output as a view of
  its buffer with the real shape. A failure raises with the backend's own message. The TensorRT backend
  neither allocates (after its first call per input) nor synchronises; the torch module allocates its own
  temporaries, and ONNX Runtime (on its own stream) is synchronised with torch's stream -- those two are
  references, not the fast path.
* Every backend runs on the device it was given (``cuda`` and ``cuda:0`` are one device): ONNX Runtime on
  that device's provider or not at all, TensorRT on a CUDA device only (it reads and writes by address, so
  a host pointer would be a crash or silent garbage; only the tests' stand-in, which declares
  ``EXECUTES_ON_HOST``, runs with ``cpu``).

The outputs of one call are overwritten by the next: copy what must outlive it. A backend serves one
stream at a time (its output buffers, and TensorRT's staging buffers and activation memory, are shared by
all its calls).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from personalive_trt.devices import canonical_device
from personalive_trt.engines.cache import EngineError
from personalive_trt.export.interface import NetworkSpec, Shape, TensorSpec

log = logging.getLogger("personalive_trt.engines")

TENSORRT_INSTALL_HINT = ('TensorRT is not installed: pip install "personalive-trt[tensorrt]" '
                         "(or NVIDIA's index: pip install --extra-index-url https://pypi.nvidia.com tensorrt)")


class TensorRTNotAvailableError(RuntimeError):
    """The ``tensorrt`` package cannot be imported (one-line message with the install command)."""


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`TensorRTNotAvailableError` saying how to install it.

    Imported on demand (not at module import) so that everything else in the package works without it.
    """
    try:
        import tensorrt
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "tensorrt":
            raise TensorRTNotAvailableError(TENSORRT_INSTALL_HINT) from None
        raise TensorRTNotAvailableError(f"TensorRT failed to import: {exc}") from exc
    except (ImportError, OSError) as exc:  # installed, but its shared libraries do not load
        raise TensorRTNotAvailableError(f"TensorRT is installed but failed to load: {exc}") from exc
    return tensorrt


# ---- TensorRT plumbing shared with the builder ------------------------------------------------------------

_TRT_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
               "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def trt_to_torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    for name, torch_dtype in _TRT_DTYPES.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise EngineError(f"TensorRT data type {dtype} has no torch equivalent here")


_LOGGERS: dict[int, tuple[Any, Any]] = {}


def trt_logger(trt: Any) -> Any:
    """The process-wide logger for this ``tensorrt`` module (TensorRT expects one logger per process).

    It forwards TensorRT's messages to the ``personalive_trt.engines`` Python logger and keeps the recent
    warnings and errors, so that a failed call can be raised with TensorRT's own explanation:
    ``mark = logger.count; ...; logger.errors_since(mark)``.
    """
    entry = _LOGGERS.get(id(trt))
    if entry is None or entry[0] is not trt:
        entry = (trt, _make_logger(trt))
        _LOGGERS[id(trt)] = entry
    return entry[1]


def _make_logger(trt: Any) -> Any:
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.CRITICAL, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.count = 0  # messages seen; read before a call, compare after it
            self.recent: deque[tuple[int, int, str]] = deque(maxlen=256)

        def log(self, sev: Any, msg: str) -> None:
            self.count += 1
            level = levels.get(sev, logging.ERROR)
            log.log(level, "TensorRT: %s", msg)
            if level >= logging.WARNING:
                self.recent.append((self.count, level, " ".join(str(msg).split())))  # one line

        def has_errors_since(self, mark: int) -> bool:
            return any(i > mark and level >= logging.ERROR for i, level, _ in self.recent)

        def errors_since(self, mark: int) -> str:
            """Errors logged after ``mark`` (warnings when there are none), joined on one line."""
            new = [(level, msg) for i, level, msg in self.recent if i > mark]
            errors = [msg for level, msg in new if level >= logging.ERROR] or [msg for _, msg in new]
            return " | ".join(errors) if errors else "TensorRT logged no message"

    return CollectingLogger()


# ---- the interface ---------------------------------------------------------------------------------------

@runtime_checkable
class EngineBackend(Protocol):
    """What the runtime needs from a network, whatever runs it."""

    spec: NetworkSpec
    device: torch.device

    def allocate(self) -> None:
        """Create the output buffers once, at the profile maximum (idempotent)."""

    def infer(self, inputs: Mapping[str, torch.Tensor], *, stable: Collection[str] = ()) -> dict[str, torch.Tensor]:
        """Run on the real input shapes; outputs are views of the preallocated buffers.

        ``stable``: inputs the caller keeps at a fixed address, holding their data, for as long as calls
        (and CUDA graphs captured around them) use them -- TensorRT then reads them in place instead of
        through its staging buffers. Backends that read inputs only during the call ignore it."""


def format_range(tensor: TensorSpec) -> str:
    """``(1, 64..256, 32)``: the allowed shapes of a tensor, one entry per axis."""
    axes = [str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in zip(tensor.min_shape, tensor.max_shape)]
    return "(" + ", ".join(axes) + ")"


class PreallocatedBackend:
    """The shared half of every backend: input checks, output buffers, output views.

    Subclasses set ``input_dtypes``/``output_dtypes`` (what the network really takes and returns, e.g.
    float16 in an fp16 ONNX export) and implement :meth:`_run`.
    """

    spec: NetworkSpec
    device: torch.device
    input_dtypes: dict[str, torch.dtype]
    output_dtypes: dict[str, torch.dtype]

    def __init__(self, spec: NetworkSpec, device: torch.device | str) -> None:
        self.spec = spec
        self.device = canonical_device(device)  # "cuda" -> "cuda:N", as tensors report it
        self.buffers: dict[str, torch.Tensor] = {}
        self._output_specs = {t.name: t for t in spec.outputs}

    def allocate(self) -> None:
        if self.buffers:
            return
        for out in self.spec.outputs:
            self.buffers[out.name] = torch.empty(math.prod(out.max_shape), dtype=self.output_dtypes[out.name],
                                                 device=self.device)

    def infer(self, inputs: Mapping[str, torch.Tensor], *, stable: Collection[str] = (), **kwargs: Any
              ) -> dict[str, torch.Tensor]:
        shapes = self.check_inputs(inputs)
        unknown = sorted(set(stable) - set(self.spec.input_names))
        if unknown:
            raise ValueError(f"{self.spec.name}: stable inputs {unknown} are not inputs; expected some of "
                             f"{self.spec.input_names}")
        if not self.buffers:
            raise RuntimeError(f"{self.spec.name}: call allocate() once before infer()")
        return self._run(inputs, shapes, stable=frozenset(stable), **kwargs)

    def _run(self, inputs: Mapping[str, torch.Tensor], shapes: dict[str, Shape], **kwargs: Any
             ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Shape]:
        """Validate the inputs against the spec; return their shapes. Raises ``ValueError`` naming the tensor."""
        spec = self.spec
        missing = [n for n in spec.input_names if n not in inputs]
        unknown = [n for n in inputs if n not in spec.input_names]
        if missing or unknown:
            problems = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
            raise ValueError(f"{spec.name}: inputs {', '.join(problems)}; expected {spec.input_names}")
        shapes: dict[str, Shape] = {}
        for tensor in spec.inputs:
            value = inputs[tensor.name]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{spec.name}: input {tensor.name!r} must be a torch.Tensor, "
                                 f"got {type(value).__name__}")
            shape = tuple(value.shape)
            if not tensor.accepts(shape):
                raise ValueError(f"{spec.name}: input {tensor.name!r} has shape {shape}; "
                                 f"allowed {format_range(tensor)}")
            expected = self.input_dtypes[tensor.name]
            if value.dtype != expected:
                raise ValueError(f"{spec.name}: input {tensor.name!r} has dtype {value.dtype}; expected {expected}")
            if value.device != self.device:
                raise ValueError(f"{spec.name}: input {tensor.name!r} is on {value.device}; "
                                 f"this {type(self).__name__} runs on {self.device}")
            if not value.is_contiguous():
                raise ValueError(f"{spec.name}: input {tensor.name!r} must be contiguous (it is read by address)")
            shapes[tensor.name] = shape
        return shapes

    def output_view(self, name: str, shape: Shape) -> torch.Tensor:
        """The first ``prod(shape)`` elements of ``name``'s buffer, viewed with ``shape`` (same address)."""
        tensor = self._output_specs[name]
        if not tensor.accepts(shape):
            raise EngineError(f"{self.spec.name}: output {name!r} came out with shape {shape}, outside the spec's "
                              f"{format_range(tensor)}: the engine and the spec disagree")
        return self.buffers[name][:math.prod(shape)].view(shape)


# ---- torch -----------------------------------------------------------------------------------------------

class TorchBackend(PreallocatedBackend):
    """The PyTorch module itself, behind the backend interface (the reference every engine is compared with).

    Args:
        spec (`NetworkSpec`): the network's interface.
        module (`torch.nn.Module`): the traceable wrapper, ``spec.wrap(models.<component>)``: positional
            inputs in ``spec.input_names`` order -> a tensor or a tuple of tensors in ``spec.output_names`` order.
        precision (`str`, *optional*, defaults to ``"fp32"``): which export's dtypes the module takes and
            returns (``TensorSpec.export_dtype``); ``"fp16"`` for a module converted to half precision.
    """

    def __init__(self, spec: NetworkSpec, module: torch.nn.Module, *, precision: str = "fp32") -> None:
        tensors = [*module.parameters(), *module.buffers()]
        super().__init__(spec, tensors[0].device if tensors else "cpu")
        self.module = module
        self.input_dtypes = {t.name: t.export_dtype(precision) for t in spec.inputs}
        self.output_dtypes = {t.name: t.export_dtype(precision) for t in spec.outputs}

    def _run(self, inputs, shapes, **kwargs):
        with torch.no_grad():
            result = self.module(*(inputs[name] for name in self.spec.input_names))
            result = (result,) if isinstance(result, torch.Tensor) else tuple(result)
            if len(result) != len(self.spec.outputs):
                raise EngineError(f"{self.spec.name}: the module returned {len(result)} outputs, the spec has "
                                  f"{len(self.spec.outputs)} ({self.spec.output_names})")
            outputs = {}
            for tensor, value in zip(self.spec.outputs, result):
                if value.dtype != self.output_dtypes[tensor.name]:
                    raise EngineError(f"{self.spec.name}: output {tensor.name!r} came out as {value.dtype}, "
                                      f"expected {self.output_dtypes[tensor.name]}")
                # A copy into the stable buffer: the module allocates its result (inside a CUDA graph that
                # allocation comes from the graph's private pool, so capture still works).
                outputs[tensor.name] = self.output_view(tensor.name, tuple(value.shape)).copy_(value)
        return outputs


# ---- ONNX Runtime ----------------------------------------------------------------------------------------

_ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
               "tensor(int64)": torch.int64, "tensor(int32)": torch.int32, "tensor(int8)": torch.int8,
               "tensor(uint8)": torch.uint8, "tensor(bool)": torch.bool}


def providers_for(device: torch.device) -> list[Any]:
    """The ONNX Runtime execution providers that run on ``device``, or :class:`EngineError` in one line.

    ``cpu``: the CPU provider alone (never CUDA, even where onnxruntime-gpu is installed). ``cuda:N``:
    the CUDA provider on device N, with the CPU provider only for the nodes CUDA has no kernel for (ONNX
    Runtime assigns those per node); without a CUDA provider the request is refused here instead of
    running on the CPU and failing every call on CUDA tensors.
    """
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise EngineError(f"ONNX Runtime backend: device {device} is not supported; expected cpu or cuda[:N]")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise EngineError(f"ONNX Runtime {ort.__version__} has no CUDA provider (available: {', '.join(available)}), "
                          f"so it cannot run on {device}: pip install onnxruntime-gpu, or use device cpu")
    return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]


class OnnxRuntimeBackend(PreallocatedBackend):
    """An ONNX file run by ONNX Runtime, with IO binding: inputs and outputs are bound by address.

    The output shapes of a new combination of input shapes are learnt on its first call (ONNX Runtime
    allocates, the result is copied into the buffers once); every later call with those shapes binds the
    preallocated buffers directly.

    Args:
        spec (`NetworkSpec`): the network's interface.
        onnx_path (`str | Path`): the exported model.
        device (`str | torch.device`, *optional*, defaults to ``"cpu"``): where the session runs and the
            tensors live; the providers follow from it (:func:`providers_for`). A CUDA device whose provider
            does not start is an error at construction.
        session_options (`onnxruntime.SessionOptions`, *optional*): passed to the session.
    """

    def __init__(self, spec: NetworkSpec, onnx_path: str | Path, *, device: str | torch.device = "cpu",
                 session_options: Any = None) -> None:
        import numpy as np
        import onnxruntime as ort

        super().__init__(spec, device)
        providers = providers_for(self.device)
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=session_options, providers=providers)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime's pybind errors share no base class; chained
            raise EngineError(f"{onnx_path}: ONNX Runtime could not load the model: {exc}") from exc
        used = self.session.get_providers()
        wanted = "CUDAExecutionProvider" if self.device.type == "cuda" else "CPUExecutionProvider"
        if used[0] != wanted:  # ONNX Runtime drops a provider that fails to initialise, with a warning only
            raise EngineError(f"{onnx_path}: ONNX Runtime was asked for {self.device} but its session runs on "
                              f"{used} ({wanted} did not start: check the CUDA/cuDNN libraries onnxruntime-gpu needs)")
        self._ort_device = (self.device.type, self.device.index or 0)

        inputs = {i.name: i.type for i in self.session.get_inputs()}
        outputs = {o.name: o.type for o in self.session.get_outputs()}
        check_io_names(spec, f"{onnx_path}", list(inputs), list(outputs))
        self.input_dtypes = {name: _ort_dtype(onnx_path, name, inputs[name]) for name in spec.input_names}
        self.output_dtypes = {name: _ort_dtype(onnx_path, name, outputs[name]) for name in spec.output_names}
        numpy_types = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                       torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8,
                       torch.bool: np.bool_}
        self._numpy = {name: numpy_types[dtype] for name, dtype in {**self.input_dtypes, **self.output_dtypes}.items()}
        self._output_shapes: dict[tuple[Shape, ...], dict[str, Shape]] = {}
        self._binding: Any = None

    def allocate(self) -> None:
        super().allocate()
        if self._binding is None:
            self._binding = self.session.io_binding()

    def _run(self, inputs, shapes, **kwargs):
        binding, (device_type, device_id) = self._binding, self._ort_device
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name in self.spec.input_names:
            binding.bind_input(name, device_type, device_id, self._numpy[name], shapes[name], inputs[name].data_ptr())
        signature = tuple(shapes[name] for name in self.spec.input_names)
        known = self._output_shapes.get(signature)
        outputs: dict[str, torch.Tensor] = {}
        for name in self.spec.output_names:
            if known is None:
                binding.bind_output(name, device_type, device_id)  # first call with these shapes: ORT allocates
            else:
                outputs[name] = self.output_view(name, known[name])
                binding.bind_output(name, device_type, device_id, self._numpy[name], known[name],
                                    outputs[name].data_ptr())
        if self.device.type == "cuda":
            # ONNX Runtime launches on its own stream: the inputs written on torch's stream must be complete.
            # (This backend is the cross-check, not the latency path; TensorRT runs on the caller's stream.)
            torch.cuda.current_stream(self.device).synchronize()
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime's pybind errors share no base class; chained
            raise EngineError(f"{self.spec.name}: ONNX Runtime failed: {exc}") from exc
        if known is None:
            learnt = {}
            for name, value in zip(self.spec.output_names, binding.copy_outputs_to_cpu()):
                learnt[name] = tuple(value.shape)
                outputs[name] = self.output_view(name, learnt[name])
                outputs[name].copy_(torch.from_numpy(value))
            self._output_shapes[signature] = learnt
        return outputs


def _ort_dtype(path: Any, name: str, type_string: str) -> torch.dtype:
    if type_string not in _ORT_DTYPES:
        raise EngineError(f"{path}: tensor {name!r} has type {type_string}, which this backend does not bind")
    return _ORT_DTYPES[type_string]


def check_io_names(spec: NetworkSpec, source: str, inputs: list[str], outputs: list[str]) -> None:
    if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
        raise EngineError(f"{source} does not match the spec {spec.name!r}: it has inputs {inputs} and outputs "
                          f"{outputs}; the spec has inputs {spec.input_names} and outputs {spec.output_names}")


# ---- TensorRT --------------------------------------------------------------------------------------------

def check_tensorrt_device(trt: Any, device: torch.device, what: str) -> None:
    """TensorRT reads and writes tensors by address: a CUDA device only, never host pointers (one-line error).

    The one exception is a ``tensorrt`` module that declares ``EXECUTES_ON_HOST`` (the tests' stand-in),
    which runs on the CPU and nowhere else."""
    on_host = bool(getattr(trt, "EXECUTES_ON_HOST", False))
    if device.type != "cuda" and not on_host:
        raise EngineError(f"{what}: TensorRT runs on a CUDA device, not {device} (it must never be given host "
                          "pointers): use device cuda, or the torch/onnxruntime backend on a CPU")
    if device.type != "cpu" and on_host:
        raise EngineError(f"{what}: the tensorrt module at {trt.__file__} executes on the host (a test stand-in), "
                          f"so it cannot run on {device}")


class TensorRTBackend(PreallocatedBackend):
    """A serialized TensorRT engine: tensor addresses bound once per execution context, ``execute_async_v3``.

    **Addresses are set once.** A CUDA graph captured around ``execute_async_v3`` replays what the context
    held at capture: its shapes and tensor addresses (TensorRT may keep them in the context's own device
    memory, which the graph reads at replay). Rebinding a context that a graph captured -- for another
    graph's temporaries, or for an eager call after capture -- would make that graph read memory that is
    no longer its input. So no context is ever rebound:

    * every input is *staged*: copied (on the stream, inside the graph when captured) into a static buffer
      of this backend sized at the profile maximum, exactly as the outputs already are, so the addresses a
      context binds never depend on where the caller's temporaries happen to live. The copy is skipped when
      the caller's tensor already starts at the staging buffer (:meth:`input_buffer` lets it write there);
    * inputs the caller passes as ``stable`` are bound where they are, with no copy: the streaming runtime
      passes the denoising UNet's state this way (the 32 bank key/value inputs are its largest tensors and
      already live in the runtime's slot buffers, sliced from their first element);
    * one execution context per combination of input shapes and stable-input addresses, created on first
      use and then only executed (shape changes would alter TensorRT's shape-dependent state under a graph
      just as address changes would).

    The alternative, a set of contexts per CUDA graph bound to that graph's temporaries, was rejected: the
    eager warm-up before each capture, and every eager call after it (reference fusion), would still need
    contexts of their own, and each would hold addresses into memory only the graph's pool keeps valid.
    The price of staging is one device-to-device copy per non-stable input per call (the UNet's inputs
    are stable in the runtime; the other networks' inputs are a few MB at most).

    The contexts run one at a time on the caller's stream, so where TensorRT lets the caller manage
    activation memory (``ExecutionContextAllocationStrategy.USER_MANAGED``, TensorRT >= 10.1) they share
    one scratch buffer of ``engine.device_memory_size_v2`` bytes; otherwise each context owns its own.
    Nothing here synchronises: the caller orders work with the stream, as with any torch kernel.

    Args:
        spec (`NetworkSpec`): the network's interface; the engine's I/O names and profile must match it.
        engine_path (`str | Path`): a serialized engine (see :func:`personalive_trt.engines.ensure_engine`).
        device (`str | torch.device`, *optional*, defaults to ``"cuda"``): the CUDA device the tensors live on.
            A CPU device is refused, except by a ``tensorrt`` module that declares ``EXECUTES_ON_HOST`` (the
            tests' stand-in).
    """

    MAX_CONTEXTS = 16  # distinct (shapes, stable addresses) combinations; the runtime needs at most 4 per network

    def __init__(self, spec: NetworkSpec, engine_path: str | Path, *, device: str | torch.device = "cuda") -> None:
        trt = require_tensorrt()
        super().__init__(spec, device)
        check_tensorrt_device(trt, self.device, spec.name)
        self.trt = trt
        self.logger = trt_logger(trt)
        if self.device.type == "cuda":
            torch.cuda.init()  # TensorRT shares torch's primary CUDA context: create it first
        engine_path = Path(engine_path)
        mark = self.logger.count
        with self._on_device():
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{engine_path}: TensorRT could not deserialize the engine: "
                              f"{self.logger.errors_since(mark)}")
        self._check_engine(engine_path)
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        size = getattr(self.engine, "device_memory_size_v2", None)
        # USER_MANAGED + set_device_memory(ptr, size) came with device_memory_size_v2 (TensorRT 10.1).
        self._user_managed = strategy.USER_MANAGED if strategy is not None and size is not None else None
        self.scratch_bytes = int(size) if self._user_managed is not None else 0
        self._scratch: torch.Tensor | None = None
        self._scratch_ptr = 0
        self._staging: dict[str, torch.Tensor] = {}
        self._contexts: dict[tuple, _Binding] = {}
        self.context: Any = None  # the context of the latest call (for inspection)

    def _on_device(self):
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _check_engine(self, engine_path: Path) -> None:
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        check_io_names(self.spec, str(engine_path), inputs, outputs)
        for tensor in self.spec.inputs:
            lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(tensor.name, 0))
            if len(lo) != len(tensor.min_shape) or not (all(a <= b for a, b in zip(lo, tensor.min_shape))
                                                        and all(a >= b for a, b in zip(hi, tensor.max_shape))):
                raise EngineError(f"{engine_path}: input {tensor.name!r} accepts {lo}..{hi}, the spec needs "
                                  f"{format_range(tensor)}: rebuild the engine")
        self.input_dtypes = {n: trt_to_torch_dtype(trt, engine.get_tensor_dtype(n)) for n in self.spec.input_names}
        self.output_dtypes = {n: trt_to_torch_dtype(trt, engine.get_tensor_dtype(n)) for n in self.spec.output_names}

    def allocate(self) -> None:
        super().allocate()
        if self._user_managed is not None and self._scratch is None:
            # TensorRT wants 256-byte aligned activation memory; CUDA allocations are, host ones may not be.
            self._scratch = torch.empty(self.scratch_bytes + 256, dtype=torch.uint8, device=self.device)
            self._scratch_ptr = self._scratch.data_ptr() + (-self._scratch.data_ptr()) % 256

    @property
    def contexts(self) -> list[Any]:
        """Every execution context created so far (one per input shapes and stable addresses)."""
        return [binding.context for binding in self._contexts.values()]

    def input_buffer(self, name: str, shape: Shape) -> torch.Tensor:
        """The staging buffer of input ``name`` viewed with ``shape``: a caller that writes its input here
        saves the copy (:meth:`infer` sees the tensor already in place)."""
        tensor = self.spec.input(name)
        if not tensor.accepts(tuple(shape)):
            raise ValueError(f"{self.spec.name}: input {name!r} cannot have shape {tuple(shape)}; "
                             f"allowed {format_range(tensor)}")
        return self._staging_buffer(name)[:math.prod(shape)].view(tuple(shape))

    def _staging_buffer(self, name: str) -> torch.Tensor:
        buffer = self._staging.get(name)
        if buffer is None:
            # Allocated on the first call that stages ``name`` (a stable input never needs one).
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise EngineError(f"{self.spec.name}: input {name!r} is staged for the first time inside a CUDA "
                                  "graph capture; run the call once eagerly first (warm-up)")
            buffer = torch.empty(math.prod(self.spec.input(name).max_shape), dtype=self.input_dtypes[name],
                                 device=self.device)
            self._staging[name] = buffer
        return buffer

    def infer(self, inputs: Mapping[str, torch.Tensor], *, stable: Collection[str] = (), stream: Any = None
              ) -> dict[str, torch.Tensor]:
        """Enqueue one run. ``stream``: a ``torch.cuda.Stream`` or a raw handle; defaults to torch's current one.

        ``stable`` (see :class:`EngineBackend`): these inputs are bound at their own address; the caller
        promises they stay there, holding the data, while this backend (or a graph captured around it) may
        read them. Passing them at another address later is allowed but costs a new execution context."""
        return super().infer(inputs, stable=stable, stream=stream)

    def _run(self, inputs, shapes, *, stable, stream=None):
        stream = self._stream(stream)
        addresses: dict[str, int] = {}
        # The staging copies go on the stream the engine runs on, so they are ordered before it.
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for name in self.spec.input_names:
                value = inputs[name]
                if name in stable:
                    addresses[name] = value.data_ptr()
                    continue
                staging = self._staging_buffer(name)
                if value.data_ptr() != staging.data_ptr():
                    staging[:value.numel()].view(value.shape).copy_(value)
                addresses[name] = staging.data_ptr()
        key = (tuple(shapes[name] for name in self.spec.input_names),
               tuple((name, addresses[name]) for name in sorted(stable)))
        binding = self._contexts.get(key) or self._bind(key, shapes, addresses)
        self.context, mark = binding.context, self.logger.count
        if not binding.context.execute_async_v3(stream.cuda_stream if stream is not None else 0):
            raise EngineError(f"{self.spec.name}: TensorRT execution failed: {self.logger.errors_since(mark)}")
        return binding.outputs

    def _bind(self, key: tuple, shapes: dict[str, Shape], addresses: dict[str, int]) -> "_Binding":
        """A new execution context with these shapes and addresses, set once (kept only if all succeed)."""
        if len(self._contexts) >= self.MAX_CONTEXTS:
            raise EngineError(f"{self.spec.name}: more than {self.MAX_CONTEXTS} combinations of input shapes and "
                              f"stable-input addresses; inputs passed as stable must come from buffers allocated "
                              f"once (this call: shapes {shapes})")
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise EngineError(f"{self.spec.name}: new input shapes or stable addresses inside a CUDA graph capture "
                              f"({shapes}); run the call once eagerly first (warm-up)")
        context, mark = self._new_context(), self.logger.count
        for name in self.spec.input_names:
            if not context.set_input_shape(name, shapes[name]):
                raise EngineError(f"{self.spec.name}: TensorRT rejected shape {shapes[name]} for input "
                                  f"{name!r}: {self.logger.errors_since(mark)}")
            self._set_address(context, name, addresses[name], mark)
        outputs = {}
        for name in self.spec.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{self.spec.name}: TensorRT could not infer the shape of output {name!r} from "
                                  f"the input shapes {shapes}: {self.logger.errors_since(mark)}")
            outputs[name] = self.output_view(name, shape)
            self._set_address(context, name, outputs[name].data_ptr(), mark)
        binding = _Binding(context, outputs)
        self._contexts[key] = binding
        return binding

    def _new_context(self) -> Any:
        mark = self.logger.count
        with self._on_device():
            if self._user_managed is None:  # TensorRT 10.0: the context allocates its own activation memory
                context = self.engine.create_execution_context()
            else:
                context = self.engine.create_execution_context(self._user_managed)
                if context is not None:
                    context.set_device_memory(self._scratch_ptr, self.scratch_bytes)
        if context is None:
            raise EngineError(f"{self.spec.name}: TensorRT could not create an execution context: "
                              f"{self.logger.errors_since(mark)}")
        if self.logger.has_errors_since(mark):  # set_device_memory returns nothing; TensorRT logs the refusal
            raise EngineError(f"{self.spec.name}: TensorRT refused the shared activation memory "
                              f"({self.scratch_bytes} bytes): {self.logger.errors_since(mark)}")
        return context

    def _set_address(self, context: Any, name: str, address: int, mark: int) -> None:
        if not context.set_tensor_address(name, address):
            raise EngineError(f"{self.spec.name}: TensorRT rejected the address of {name!r}: "
                              f"{self.logger.errors_since(mark)}")

    def _stream(self, stream: Any) -> "torch.cuda.Stream | None":
        """The CUDA stream to run on (``None`` on the host stand-in): given, or torch's current one."""
        if stream is not None and not isinstance(stream, (int, torch.cuda.Stream)):
            raise TypeError(f"{self.spec.name}: stream must be a torch.cuda.Stream or an int handle, got {stream!r}")
        if self.device.type != "cuda":
            return None
        if stream is None:
            return torch.cuda.current_stream(self.device)
        if isinstance(stream, int):
            return torch.cuda.ExternalStream(stream, device=self.device)
        return stream


@dataclass
class _Binding:
    """One execution context with its shapes and addresses set, and the output views it writes."""

    context: Any
    outputs: dict[str, torch.Tensor]
