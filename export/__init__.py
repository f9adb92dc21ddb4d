"""ONNX export of every PersonaLive network (``personalive_trt.export``, the top-level ``export/`` folder).

One spec per network derived from the shared shapes object, traced from the ``personalive_trt.models``
modules.

* :mod:`~personalive_trt.export.interface`: :class:`TensorSpec`, :class:`NetworkSpec`, :class:`Tolerance`,
  :class:`ExportError` (what a network looks like from outside).
* :mod:`~personalive_trt.export.specs`: :func:`network_specs` (one spec per role, nine, for a
  :class:`~personalive_trt.shapes.StreamShapes`: the denoising UNet per window, the VAE decoder or TAESD per
  ``--vae``), :func:`sample_inputs`, the traceable wrappers.
* :mod:`~personalive_trt.export.onnx_export`: :func:`export_network` / :func:`export_all` (fp32 and
  strongly typed fp16 ONNX, verified in ONNX Runtime against torch, ``manifest.json``).
* :mod:`~personalive_trt.export.fp16`: the fp32 -> fp16 graph conversion with keep_fp32 islands, the
  fp16-storage emulation used to verify it, and the activation survey used to choose the islands.
* :mod:`~personalive_trt.export.attention`: the fused-attention copy ONNX Runtime runs.
* :mod:`~personalive_trt.export.memory`: this process's memory while exporting (allocator, peak per phase).
"""
from importlib import import_module

from .interface import ExportError, NetworkSpec, TensorSpec, Tolerance
from .specs import merge_specs, network_specs, sample_inputs, verification_cases

# The exporter needs the `onnx` extra; specs do not (the torch pipeline reads them), so the
# exporter's names are imported on first use.
_EXPORTER = ("all_specs", "export_all", "export_network", "export_precisions", "read_manifest")


def __getattr__(name: str):
    if name in _EXPORTER:
        return getattr(import_module(f"{__name__}.onnx_export"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ExportError", "NetworkSpec", "TensorSpec", "Tolerance", "all_specs", "export_all", "export_network",
    "export_precisions", "merge_specs", "network_specs", "read_manifest", "sample_inputs", "verification_cases",
]
