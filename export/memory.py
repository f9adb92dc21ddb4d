"""This process's host memory while networks are exported: give freed blocks back, measure each phase's peak.

Both are process-wide and Linux/glibc-specific; elsewhere they change nothing and say so. ``build`` and
:func:`~personalive_trt.export.onnx_export.export_all` call :func:`return_freed_memory` before they load or
trace; the exporter measures every network's export and verification with :class:`PeakRss`. Whether a build
will fit at all is estimated before it starts, one floor up (:mod:`personalive_trt.build.memory`).
"""
from __future__ import annotations

import ctypes
import platform


class BuildMemoryError(RuntimeError):
    """The build would not fit in the memory this process may use (or its allocator could not be set up)."""


MMAP_THRESHOLD = 1 << 20  # bytes: every allocation from 1 MiB up is its own mapping, unmapped when freed
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)


def return_freed_memory() -> str:
    """Make glibc give freed tensors back to the system (a fixed mmap threshold); returns what was done.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), after which
    blocks below it come from the heap, where freed space is kept while anything above it lives. Tracing a
    UNet (`torch.onnx.export`) frees thousands of such activations between small objects the tracer keeps,
    so the process held ~40x the network's input and output bytes until the trace was dropped (the small UNet
    at 256²: benchmarks/RESULTS.md, "build --backend onnxruntime: peak host memory"). A fixed
    threshold (which also stops the adjustment) returns every block of 1 MiB or more when it is freed.
    Process-wide and permanent; `build` and :func:`~personalive_trt.export.onnx_export.export_all` call it.
    Elsewhere than glibc nothing is changed, and the returned text says so."""
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return f"allocator unchanged (C library {libc_name or 'unknown'}, not glibc)"
    if ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        raise BuildMemoryError(f"glibc mallopt(M_MMAP_THRESHOLD, {MMAP_THRESHOLD}) failed")
    return f"glibc mmap threshold fixed at {MMAP_THRESHOLD >> 20} MiB"


class PeakRss:
    """Peak resident memory of this process over one phase, read from ``/proc/self/status`` (VmHWM).

    ``reset()`` writes 5 to ``/proc/self/clear_refs``, which sets the high-water mark back to the
    current RSS (Linux >= 4.0), so each network's export and verification get their own peak while
    running in this process. Where that file is not writable the peak is the process high-water mark
    since start (``method`` says which), an upper bound of the phase's peak.
    """

    def __init__(self) -> None:
        self.method = "VmHWM reset per phase via /proc/self/clear_refs"
        self.reset()

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "process high-water mark (VmHWM/ru_maxrss; not resettable here)"

    @staticmethod
    def peak() -> int:
        """Bytes."""
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
