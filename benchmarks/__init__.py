"""The streaming benchmark (``personalive-trt bench``, ``python benchmarks/bench_stream.py``).

One idea per module: :mod:`.options` (what to measure), :mod:`.timing` (device-time clocks, per-network
probes, percentiles, memory), :mod:`.session` (one measured streaming session and its inputs),
:mod:`.flops` (FLOPs per step), :mod:`.benchmark` (the protocol and the report; its docstring defines
every field) and :mod:`.cli` (the command and its summary).
"""
from personalive_trt.bench.benchmark import run_benchmark, stage_breakdown
from personalive_trt.bench.cli import bench, main, standalone_app, summary
from personalive_trt.bench.flops import FLOPS_JSON_ENV, STEADY_ROLES, reference_flops
from personalive_trt.bench.options import BenchError, BenchOptions, stream_config

__all__ = ["FLOPS_JSON_ENV", "STEADY_ROLES", "BenchError", "BenchOptions", "bench", "main", "reference_flops",
           "run_benchmark", "stage_breakdown", "standalone_app", "stream_config", "summary"]
