"""Benchmarking, in one home: this folder is the package ``personalive_trt.bench`` (pyproject's package map),
beside the measurement scripts and their results.

Library (``personalive-trt bench``, whose command is :mod:`personalive_trt.cli.bench`), one idea per module:
:mod:`.options` (what to measure), :mod:`.timing` (device-time clocks, per-network probes, percentiles, memory),
:mod:`.session` (one measured streaming session and its inputs), :mod:`.flops` (FLOPs per step),
:mod:`.benchmark` (the protocol and the report; its docstring defines every field), :mod:`.offline` (``--mode
offline``: the original's offline loop per frame on the same clip), :mod:`.summary` (the lines
the command prints), :mod:`.matrix` (the GPU check's benchmark matrix) and :mod:`.gpu_check` (the GPU check's
records). Scripts: ``bench_stream.py`` (the ``bench`` command), ``build_memory.py`` (the build's peak memory and
the fit of :mod:`personalive_trt.build.memory`), ``stage_times.py`` (each network alone), ``offline_ratio.py`` (the
offline / stream per-frame ratio, both modes interleaved in one process). Figures:
``RESULTS.md`` and ``results/``; data: ``flops_full_512.json``, ``sample_facemesh.json`` (the sample's FaceMesh
boxes, :mod:`.offline`).
"""
from importlib import import_module

from personalive_trt.bench.benchmark import run_benchmark, stage_breakdown
from personalive_trt.bench.flops import FLOPS_JSON_ENV, STEADY_ROLES, reference_flops
from personalive_trt.bench.options import BenchError, BenchOptions, stream_config
from personalive_trt.bench.summary import summary

#: The command's names, importable from here as before it moved to personalive_trt.cli.bench.
_COMMAND = ("bench", "main", "standalone_app")


def __getattr__(name: str):
    if name in _COMMAND:
        return getattr(import_module("personalive_trt.cli.bench"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FLOPS_JSON_ENV", "STEADY_ROLES", "BenchError", "BenchOptions", "bench", "main", "reference_flops",
           "run_benchmark", "stage_breakdown", "standalone_app", "stream_config", "summary"]
