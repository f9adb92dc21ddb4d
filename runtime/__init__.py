"""The graph-captured streaming runtime (``personalive_trt.runtime``)."""
