"""The one place that decides what runs the networks, and opens them.

:func:`open_networks` turns a backend choice into :class:`~personalive_trt.engines.networks.Networks`: torch
modules (loaded weights, or ``models`` already loaded), or the ONNX Runtime sessions / TensorRT engines of a
built engines folder (:func:`personalive_trt.engines.folder.load_networks`, which checks the folder against the
weights, configuration, device and dtype), then compiled or not (``--compile``,
:func:`personalive_trt.runtime.compile.resolve_compile`). ``run``, ``serve``, ``bench`` and
``StreamRuntime.from_models`` / ``from_engines`` all come through here; the loops above never know which
backend runs.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from personalive_trt.choices import Backend, CompileMode, Loop
from personalive_trt.config import StreamConfig
from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR, load_networks
from personalive_trt.engines.networks import Networks
from personalive_trt.models.weights import Models, load_models
from personalive_trt.runtime.compile import CompileOptions, compile_networks, resolve_compile


def open_networks(backend: Backend | str = Backend.TORCH, *, config: StreamConfig,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  weights: str | None = None, models: Models | None = None, engines: str | Path | None = None,
                  compile: CompileMode | str | CompileOptions | bool = CompileMode.OFF,  # noqa: A002
                  loop: Loop | str = Loop.RUNTIME, log: Callable[[str], None] | None = None) -> Networks:
    """The networks of one stream.

    Args:
        backend (`Backend` or its string, defaults to ``"torch"``): what runs them.
        config (`StreamConfig`): the stream they serve (engines must have been built for it).
        device, dtype: where and in which precision they run. torch: what ``weights`` are loaded on (``models``
            bring their own). Engine backends: ``device`` is required; ``dtype`` picks the fp16/fp32 build
            (``None``: what was built).
        weights (`str`, *optional*): a weights folder or ``synthetic[:size]``. torch: loaded unless ``models`` is
            given. Engine backends: required, the spec the engines were built from (checked against the record).
        models (`Models`, *optional*): loaded torch modules (torch backend); never changed.
        engines (`str | Path`, *optional*): the engines folder (default ``./engines_cache``); also where the
            compile cache lives (``ENGINES/torch_compile``).
        compile: ``auto``/``on``/``off`` (``--compile``: ``auto`` compiles only from a warm cache), or explicitly
            ``True`` / :class:`~personalive_trt.runtime.compile.CompileOptions` / ``False``.
        loop (`Loop`): the loop they are for (``--compile on`` compiles the streaming runtime's networks only).
        log (`callable`, *optional*): gets one line when the networks are compiled.
    """
    backend = Backend.parse(backend, "backend")
    if isinstance(compile, (bool, CompileOptions)) and compile and backend.runs_engines:
        raise ValueError(f"compile: only the torch backend is compiled, not {backend}")
    if not backend.runs_engines:
        if models is None:
            models = load_models(weights, device=device, dtype=dtype, vae=config.vae)
        networks = Networks.from_models(models, config)
    else:
        if weights is None:
            raise ValueError(f"open_networks: --backend {backend} needs weights= (the spec the engines were built "
                             "from)")
        networks = load_networks(Path(engines or DEFAULT_ENGINES_DIR), backend, weights, config,
                                 models.device if device is None else device, dtype=dtype)
    if isinstance(compile, bool):  # explicit: compile with the default options, or not at all
        wanted, options = compile, None
    elif isinstance(compile, CompileOptions):
        wanted, options = True, compile
    else:  # --compile auto|on|off
        options = resolve_compile(compile, backend, engines, None if backend.runs_engines else networks, loop)
        wanted = options is not None
    if not wanted:
        return networks
    compiled = compile_networks(networks, options)
    if log is not None:
        log(f"torch.compile: {compiled.compiled.cache_state} cache in {compiled.compiled.options.folder()}")
    return compiled

__all__ = ["open_networks"]
