"""ONNX export of every PersonaLive network (``personalive_trt.export``).

Filled in by the export stage: one spec per network derived from the shared shapes
object, traced from the ``personalive_trt`` models.
"""
