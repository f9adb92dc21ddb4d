"""``build --backend torch --compile``: fill the torch.compile cache so that later starts are warm.

:mod:`personalive_trt.runtime.compile` compiles the torch networks of one stream; this runs each window's stream
once (the runtime compiles every shape at construction), which bundles the artefacts into the cache folder that
``run``/``serve``/``bench --compile auto`` then find.
"""
from __future__ import annotations

from pathlib import Path

from personalive_trt.config import StreamConfig
from personalive_trt.devices import resolve_device
from personalive_trt.models.weights import load_models
from personalive_trt.runtime.compile import CACHE_SUBDIR, CompileOptions, require_compiler
from personalive_trt.runtime.stream import StreamRuntime


def warm_cache(weights: str, engines: Path, windows=(4,), vae: str = "full", device: str = "auto",
               dtype: str = "auto") -> list[dict]:
    """``build --backend torch --compile``: compile every window's stream once so later starts are warm;
    returns each window's :meth:`CompiledState.report`."""
    torch_device, torch_dtype = resolve_device(device, dtype, backend="torch")
    require_compiler(torch_device)
    models = load_models(weights, device=torch_device, dtype=torch_dtype, vae=vae)
    options = CompileOptions(cache_dir=Path(engines) / CACHE_SUBDIR)
    reports = []
    for window in windows:
        runtime = StreamRuntime.from_models(models, StreamConfig(window=window, vae=vae), compile=options)
        reports.append(runtime.compile_report())
        del runtime
    return reports
