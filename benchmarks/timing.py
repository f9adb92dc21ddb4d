"""Clocks of the benchmark: device time with CUDA events (host ``perf_counter`` on CPU), per-network probes,
percentiles, and what the process used (device name, peak memory)."""
from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max of ``values`` (linear interpolation), rounded to 0.001."""
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    stats = {"p50": np.percentile(a, 50), "p95": np.percentile(a, 95), "p99": np.percentile(a, 99),
             "mean": a.mean(), "min": a.min(), "max": a.max()}
    return {k: round(float(v), 3) for k, v in stats.items()}


class Clock:
    """Brackets device work: CUDA events on a stream (device time), or ``perf_counter`` on CPU."""

    def __init__(self, device, stream=None) -> None:
        import torch

        self.cuda = device.type == "cuda"
        self.stream = stream if stream is not None else (torch.cuda.current_stream(device) if self.cuda else None)

    def mark(self, stream=None):
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record(stream or self.stream)
        return event

    def ms(self, start, end) -> float:
        """Milliseconds between two marks (the end mark must have completed on CUDA)."""
        if not self.cuda:
            return (end - start) * 1e3
        end.synchronize()
        return start.elapsed_time(end)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


class StageProbe:
    """Times (and optionally counts the FLOPs of) every backend ``infer`` call, by wrapping it on the instance.

    ``begin_call``/``end_call`` bracket one streaming call; ``calls`` keeps, per call, role -> ms.
    """

    def __init__(self, networks, clock: Clock) -> None:
        self.networks, self.clock = networks, clock
        self.calls: list[dict[str, float]] = []
        self.flops: dict[str, int] | None = None
        self._marks: list[tuple[str, Any, Any]] | None = None
        self._counting = False

    def __enter__(self) -> "StageProbe":
        for role, backend in self.networks.backends.items():
            backend.infer = self._wrap(role, backend.infer)  # instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        for backend in self.networks.backends.values():
            vars(backend).pop("infer", None)

    def _wrap(self, role: str, infer: Callable) -> Callable:
        def timed(inputs, *args, **kwargs):
            if self._counting:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formula()) as counter:
                    out = infer(inputs, *args, **kwargs)
                self.flops[role] = self.flops.get(role, 0) + int(counter.get_total_flops())
                return out
            if self._marks is None:
                return infer(inputs, *args, **kwargs)
            start = self.clock.mark(_current_stream(self.clock))
            out = infer(inputs, *args, **kwargs)
            self._marks.append((role, start, self.clock.mark(_current_stream(self.clock))))
            return out

        return timed

    def begin_call(self) -> None:
        self._marks = []

    def end_call(self) -> None:
        """Resolve this call's marks (after the call's output was waited for)."""
        stages: dict[str, float] = {}
        for role, start, end in self._marks or []:
            stages[role] = stages.get(role, 0.0) + self.clock.ms(start, end)
        self.calls.append(stages)
        self._marks = None

    def count_flops(self, call: Callable[[], Any]) -> None:
        """Run ``call`` (one eager streaming call) counting each network's FLOPs."""
        self.flops, self._counting = {}, True
        try:
            call()
        finally:
            self._counting = False


def _current_stream(clock: Clock):
    if not clock.cuda:
        return None
    import torch

    return torch.cuda.current_stream()


def _cpu_attention_formula() -> dict:
    """FlopCounterMode misses CPU flash attention (torch 2.x); count it with the SDPA formula."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def formula(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: formula}


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def host_peak_rss_mb() -> float | None:
    """Peak resident set size of this process (Linux/macOS), MiB."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def memory_report(device) -> dict:
    import torch

    if device.type != "cuda":
        return {"kind": "host_rss", "peak_mb": host_peak_rss_mb()}
    free, total = torch.cuda.mem_get_info(device)
    return {"kind": "cuda", "peak_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
            "device_used_mb": round((total - free) / 2**20, 1), "device_total_mb": round(total / 2**20, 1)}
