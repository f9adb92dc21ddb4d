"""TensorRT engine building and the engine cache (``personalive_trt.engines``)."""
