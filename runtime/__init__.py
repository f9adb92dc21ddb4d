"""The graph-captured streaming runtime (``personalive_trt.runtime``): :class:`StreamRuntime`."""
from .stream import Output, ReadyEvent, StreamRuntime

__all__ = ["Output", "ReadyEvent", "StreamRuntime"]
