"""One interface for running an exported network: a torch module, an ONNX Runtime session or a TensorRT engine.

Every backend follows the same contract (:class:`EngineBackend`), so the streaming runtime and
``personalive-trt run --backend`` never branch on which one runs:

* :meth:`~EngineBackend.allocate` creates each output buffer once, at the profile maximum of the
  network's :class:`~personalive_trt.export.spec.NetworkSpec`. Buffer addresses never change afterwards,
  which is what CUDA-graph capture needs.
* :meth:`~EngineBackend.infer` checks the inputs against the spec (names, dtype, device, shape inside the
  profile range; errors name the tensor and the allowed range), runs the network on the *real* shapes of
  this call (never over uninitialised memory at the profile maximum) and returns each output as a view of
  its buffer with the real shape. A failure raises with the backend's own message. The TensorRT backend
  neither allocates nor synchronises; the torch module allocates its own temporaries, and ONNX Runtime
  (on its own stream) is synchronised with torch's stream -- those two are references, not the fast path.

The outputs of one call are overwritten by the next: copy what must outlive it.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from personalive_trt.engines.cache import EngineError
from personalive_trt.export.spec import NetworkSpec, Shape, TensorSpec

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

    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on the real input shapes; outputs are views of the preallocated buffers."""


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
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" -> "cuda:N", as tensors report it
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}
        self._output_specs = {t.name: t for t in spec.outputs}

    def allocate(self) -> None:
        if self.buffers:
            return
        for out in self.spec.outputs:
            self.buffers[out.name] = torch.empty(math.prod(out.max_shape), dtype=self.output_dtypes[out.name],
                                                 device=self.device)

    def infer(self, inputs: Mapping[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        shapes = self.check_inputs(inputs)
        if not self.buffers:
            raise RuntimeError(f"{self.spec.name}: call allocate() once before infer()")
        return self._run(inputs, shapes, **kwargs)

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


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu and a CUDA device are both there, else CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend(PreallocatedBackend):
    """An ONNX file run by ONNX Runtime, with IO binding: inputs and outputs are bound by address.

    The output shapes of a new combination of input shapes are learnt on its first call (ONNX Runtime
    allocates, the result is copied into the buffers once); every later call with those shapes binds the
    preallocated buffers directly.

    Args:
        spec (`NetworkSpec`): the network's interface.
        onnx_path (`str | Path`): the exported model.
        providers (`Sequence`, *optional*): ONNX Runtime execution providers; defaults to
            :func:`default_providers`. The device follows the first provider the session really uses.
        session_options (`onnxruntime.SessionOptions`, *optional*): passed to the session.
    """

    def __init__(self, spec: NetworkSpec, onnx_path: str | Path, *, providers: Sequence[Any] | None = None,
                 session_options: Any = None) -> None:
        import numpy as np
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=session_options,
                                                providers=list(providers) if providers else default_providers())
        except Exception as exc:  # noqa: BLE001 -- onnxruntime's pybind errors share no base class; chained
            raise EngineError(f"{onnx_path}: ONNX Runtime could not load the model: {exc}") from exc
        used = self.session.get_providers()[0]
        if used == "CUDAExecutionProvider":
            index = int(self.session.get_provider_options()[used].get("device_id", 0))
            device = torch.device("cuda", index)
        else:
            device = torch.device("cpu")
        super().__init__(spec, device)
        self._ort_device = (device.type, device.index or 0)

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

class TensorRTBackend(PreallocatedBackend):
    """A serialized TensorRT engine: one execution context, addresses bound by name, ``execute_async_v3``.

    Per call it sets the real input shapes and tensor addresses (only those that changed since the last
    call), reads the output shapes the engine infers from them, and enqueues the engine on the stream,
    without synchronising: the caller orders work with the stream, as with any torch kernel. With the
    same input tensors and shapes every call, it is ready for CUDA-graph capture on a non-default stream.

    Args:
        spec (`NetworkSpec`): the network's interface; the engine's I/O names and profile must match it.
        engine_path (`str | Path`): a serialized engine (see :func:`personalive_trt.engines.ensure_engine`).
        device (`str | torch.device`, *optional*, defaults to ``"cuda"``): where the tensors live. Only the
            tests' stand-in ``tensorrt`` module executes with ``"cpu"``.
    """

    def __init__(self, spec: NetworkSpec, engine_path: str | Path, *, device: str | torch.device = "cuda") -> None:
        trt = require_tensorrt()
        super().__init__(spec, device)
        self.trt = trt
        self.logger = trt_logger(trt)
        if self.device.type == "cuda":
            torch.cuda.init()  # TensorRT shares torch's primary CUDA context: create it first
        engine_path = Path(engine_path)
        mark = self.logger.count
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise EngineError(f"{engine_path}: TensorRT could not deserialize the engine: "
                                  f"{self.logger.errors_since(mark)}")
            self._check_engine(engine_path)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise EngineError(f"{engine_path}: TensorRT could not create an execution context: "
                                  f"{self.logger.errors_since(mark)}")
        self._shapes: dict[str, Shape] = {}
        self._addresses: dict[str, int] = {}
        # context_per_shape: one execution context per input-shape signature (see _use_context).
        self.context_per_shape = False
        self._bindings: dict[tuple, tuple[Any, dict, dict]] = {}
        self._scratch: torch.Tensor | None = None

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

    def infer(self, inputs: Mapping[str, torch.Tensor], *, stream: Any = None) -> dict[str, torch.Tensor]:
        """Enqueue one run. ``stream``: a ``torch.cuda.Stream`` or a raw handle; defaults to torch's current one."""
        return super().infer(inputs, stream=stream)

    def _use_context(self, shapes: dict[str, Shape]) -> None:
        """With ``context_per_shape``: switch to the execution context of these input shapes.

        A CUDA graph captured around ``execute_async_v3`` replays what the context enqueued for the
        shapes it had then, including TensorRT's own shape-dependent state; a later ``set_input_shape``
        on the same context would change that state under the graph. So a graph per bank length needs a
        context per bank length. The contexts run one at a time, so where TensorRT lets the caller
        manage activation memory (TensorRT >= 10) they share one scratch buffer sized for the engine.
        """
        key = tuple(shapes[name] for name in self.spec.input_names)
        binding = self._bindings.get(key)
        if binding is None:
            if not self._bindings:  # the first signature keeps the context made at load time
                binding = (self.context, self._shapes, self._addresses)
            else:
                binding = (self._new_context(), {}, {})
            self._bindings[key] = binding
        self.context, self._shapes, self._addresses = binding

    def _new_context(self) -> Any:
        trt, engine, mark = self.trt, self.engine, self.logger.count
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        size = getattr(engine, "device_memory_size_v2", None)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            if strategy is None or size is None:
                context = engine.create_execution_context()
            else:
                context = engine.create_execution_context(strategy.USER_MANAGED)
                if self._scratch is None:
                    self._scratch = torch.empty(int(size), dtype=torch.uint8, device=self.device)
                context.set_device_memory(self._scratch.data_ptr(), int(size))
        if context is None:
            raise EngineError(f"{self.spec.name}: TensorRT could not create another execution context: "
                              f"{self.logger.errors_since(mark)}")
        return context

    def _run(self, inputs, shapes, *, stream=None):
        if self.context_per_shape:
            self._use_context(shapes)
        context, mark = self.context, self.logger.count
        for name in self.spec.input_names:
            if self._shapes.get(name) != shapes[name]:
                if not context.set_input_shape(name, shapes[name]):
                    self._shapes.pop(name, None)
                    raise EngineError(f"{self.spec.name}: TensorRT rejected shape {shapes[name]} for input "
                                      f"{name!r}: {self.logger.errors_since(mark)}")
                self._shapes[name] = shapes[name]
            self._bind(name, inputs[name].data_ptr(), mark)
        outputs = {}
        for name in self.spec.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{self.spec.name}: TensorRT could not infer the shape of output {name!r} from "
                                  f"the input shapes {shapes}: {self.logger.errors_since(mark)}")
            outputs[name] = self.output_view(name, shape)
            self._bind(name, outputs[name].data_ptr(), mark)
        if not context.execute_async_v3(self._stream_handle(stream)):
            raise EngineError(f"{self.spec.name}: TensorRT execution failed: {self.logger.errors_since(mark)}")
        return outputs

    def _bind(self, name: str, address: int, mark: int) -> None:
        if self._addresses.get(name) != address:
            if not self.context.set_tensor_address(name, address):
                self._addresses.pop(name, None)
                raise EngineError(f"{self.spec.name}: TensorRT rejected the address of {name!r}: "
                                  f"{self.logger.errors_since(mark)}")
            self._addresses[name] = address

    def _stream_handle(self, stream: Any) -> int:
        if stream is None:
            return torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if isinstance(stream, int):
            return stream
        if isinstance(stream, torch.cuda.Stream):
            return stream.cuda_stream
        raise TypeError(f"{self.spec.name}: stream must be a torch.cuda.Stream or an int handle, got {stream!r}")

