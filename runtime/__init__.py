"""The loops over the nine networks, and what opens them (``personalive_trt.runtime``, the top-level ``runtime/``).

* :mod:`.open` -- :func:`~.open.open_networks`: the one place that decides what runs the networks (torch, ONNX
  Runtime, TensorRT; compiled or not) and opens them;
* :mod:`.stream` -- :class:`StreamRuntime`, the streaming loop on preallocated buffers (CUDA graphs on a GPU):
  what ``run`` and ``serve`` animate with;
* :mod:`.reference_loop` -- :class:`~.reference_loop.Animator`, the readable reference loop every faster path
  is held to (``--reference-loop``);
* :mod:`.offline_loop` -- :class:`~.offline_loop.OfflineAnimator`, the original's offline script's loop on the
  reference loop (``run --mode offline``);
* :mod:`.compile` -- torch.compile for the torch backend, inside the runtime's graphs;
* :mod:`.animator` -- the options a session animates with, their validate-first check, ``open_animator``.
"""
from .stream import Output, ReadyEvent, StreamRuntime

__all__ = ["Output", "ReadyEvent", "StreamRuntime"]
