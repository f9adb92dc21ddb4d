"""TensorRT engine building and the engine cache (``personalive_trt.engines``).

* :mod:`~personalive_trt.engines.builder`: ONNX -> TensorRT engine through the Python API (TensorRT 10
  and 11), one optimisation profile per network from its :class:`~personalive_trt.export.interface.NetworkSpec`,
  a timing cache per GPU, per-network precision overrides.
* :mod:`~personalive_trt.engines.cache`: engines keyed by network, ONNX hash, profile, precision, TensorRT
  version and GPU, with a JSON manifest; stale engines are rebuilt or refused, never loaded.
* :mod:`~personalive_trt.engines.backends`: one interface (:class:`EngineBackend`) over a torch module,
  an ONNX Runtime session and a TensorRT engine, each on the device it was given (TensorRT: CUDA only;
  its execution contexts bind their tensor addresses once, see :class:`TensorRTBackend`).
* :mod:`~personalive_trt.engines.networks`: :class:`~personalive_trt.engines.networks.Networks`, the nine
  networks of one stream behind that interface, called by role; the loops (``runtime/``) see only this.
* :mod:`~personalive_trt.engines.folder`: a built engines folder (``build.json``, the ONNX exports, the engine
  cache): its record, and its networks checked against the weights, configuration, device and dtype asked for.

``tensorrt`` itself is imported only when needed (:func:`require_tensorrt`).
"""
from personalive_trt.engines.backends import (
    TENSORRT_INSTALL_HINT,
    EngineBackend,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TensorRTNotAvailableError,
    TorchBackend,
    check_tensorrt_device,
    providers_for,
    require_tensorrt,
)
from personalive_trt.engines.builder import (
    PRECISIONS,
    BuildOptions,
    build_engines,
    build_serialized_engine,
    ensure_engine,
    resolve_precision,
    typing_mode,
)
from personalive_trt.engines.cache import (
    EngineCache,
    EngineError,
    EngineKey,
    GpuInfo,
    StaleEngineError,
    onnx_digest,
)

__all__ = [
    "PRECISIONS", "TENSORRT_INSTALL_HINT", "BuildOptions", "EngineBackend", "EngineCache", "EngineError",
    "EngineKey", "GpuInfo", "OnnxRuntimeBackend", "StaleEngineError", "TensorRTBackend", "TensorRTNotAvailableError",
    "TorchBackend", "build_engines", "build_serialized_engine", "check_tensorrt_device", "ensure_engine", "onnx_digest",
    "providers_for", "require_tensorrt", "resolve_precision", "typing_mode",
]
