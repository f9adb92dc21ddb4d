"""Devices and dtypes, chosen once: ``auto`` picks the GPU when there is one, and ``cuda`` means one device.

Two rules every module follows:

* ``--device auto`` (the default of ``run``, ``serve`` and ``bench``) is CUDA with fp16 when torch sees a
  CUDA device, else the CPU with fp32; ``--dtype auto`` follows the device, an explicit ``--dtype`` wins.
  A CUDA request on a machine without CUDA is an error, never a quiet run on the CPU.
* ``cuda`` and ``cuda:0`` are the same device. Tensors always report an index (``cuda:0``), so a device
  kept as plain ``cuda`` compares unequal to every tensor on it and misses every table cached per
  device; :func:`canonical_device` gives every such device its index once, where it enters.
"""
from __future__ import annotations

import torch

from personalive_trt.choices import Backend

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def canonical_device(device: torch.device | str) -> torch.device:
    """``cuda`` -> ``cuda:N`` (the current CUDA device, as tensors report it); other devices unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_device(device: str = "auto", dtype: str = "auto", backend: Backend | str = Backend.TORCH
                   ) -> tuple[torch.device, torch.dtype]:
    """``--device``/``--dtype`` -> a canonical torch device and dtype (see the module docstring).

    ``backend="tensorrt"`` needs a CUDA device: TensorRT reads and writes device memory by address, so a
    CPU device would hand it host pointers. It is refused here, before anything is loaded."""
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected auto, {' or '.join(DTYPES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'none'})")
        try:
            index = torch.device(device).index
        except RuntimeError as exc:
            raise ValueError(f"--device {device!r}: expected cuda or cuda:N ({exc})") from None
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if backend == Backend.TENSORRT and device == "cpu":
        raise ValueError("--backend tensorrt runs on a CUDA device, not the CPU (TensorRT takes device pointers); "
                         "use --device cuda, or --backend torch|onnxruntime on a CPU")
    if dtype == "auto":
        dtype = "fp16" if device.startswith("cuda") else "fp32"
    if dtype == "fp16" and device == "cpu":
        raise ValueError("--dtype fp16 needs a CUDA device (fp16 on CPU is unsupported for these networks)")
    return canonical_device(device), DTYPES[dtype]


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """``cuda:0 (NVIDIA H200), fp16`` / ``cpu, fp32``: what a command prints before it starts."""
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"{device}{name}, {DTYPE_NAMES.get(dtype, str(dtype))}"
