"""ONNX export of every PersonaLive network (``personalive_trt.export``).

Filled in by the export stage: one spec per network derived from the shared shapes
object, traced from the ``personalive_trt`` models.

* :mod:`~personalive_trt.export.spec`: :class:`TensorSpec`, :class:`NetworkSpec`, :class:`Tolerance`.
* :mod:`~personalive_trt.export.specs`: :func:`network_specs` (the eight networks of a
  :class:`~personalive_trt.shapes.StreamShapes`), :func:`sample_inputs`, the traceable wrappers.
* :mod:`~personalive_trt.export.onnx_export`: :func:`export_network` / :func:`export_all` (fp32 and
  strongly typed fp16 ONNX, verified in ONNX Runtime against torch, ``manifest.json``).
* :mod:`~personalive_trt.export.fp16`: the fp32 -> fp16 graph conversion with keep_fp32 islands, the
  fp16-storage emulation used to verify it, and the activation survey used to choose the islands.
"""
from .onnx_export import ExportError, all_specs, export_all, export_network, export_precisions, read_manifest
from .spec import NetworkSpec, TensorSpec, Tolerance
from .specs import merge_specs, network_specs, sample_inputs, verification_cases

__all__ = [
    "ExportError", "NetworkSpec", "TensorSpec", "Tolerance", "all_specs", "export_all", "export_network",
    "export_precisions", "merge_specs", "network_specs", "read_manifest", "sample_inputs", "verification_cases",
]
