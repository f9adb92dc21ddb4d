"""What an exported network looks like from outside: named tensors with shape ranges.

A :class:`NetworkSpec` is derived from :class:`personalive_trt.shapes.StreamShapes` and is all the
export stage, the engine builder (optimisation profiles) and the engine backends need to know
about a network's interface.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

Shape = tuple[int, ...]


class ExportError(RuntimeError):
    """An export that could not be produced or missed its verification threshold (nothing was written).

    Defined here, beside the specs, so callers can catch it without importing onnx.
    """


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output.

    ``min_shape``/``opt_shape``/``max_shape`` are equal for a static tensor; axes where they differ
    are dynamic (exported as symbolic dimensions, covered by the engine's optimisation profile).
    ``dtype`` is the fp32-export dtype; a float tensor becomes float16 in the fp16 export unless
    ``keep_fp32`` is set.

    ``sample`` names the value distribution of realistic sample inputs (see
    :func:`personalive_trt.export.specs.sample_inputs`: ``"normal"``, ``"zeros"``, ``"values"`` (exactly
    ``values``), ``"image01"``, ``"image_pm1"``, ``"clip_pixels"``, ``"keypoint_maps"``); it only matters
    for inputs.
    """

    name: str
    min_shape: Shape
    opt_shape: Shape
    max_shape: Shape
    dtype: torch.dtype = torch.float32
    keep_fp32: bool = False
    sample: str = "normal"
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.min_shape) == len(self.opt_shape) == len(self.max_shape)):
            raise ValueError(f"{self.name}: min/opt/max shapes differ in rank")
        for lo, mid, hi in zip(self.min_shape, self.opt_shape, self.max_shape):
            if not lo <= mid <= hi:
                raise ValueError(f"{self.name}: shape range {self.min_shape}..{self.max_shape} is not ordered")

    @classmethod
    def fixed(cls, name: str, shape: Shape, dtype: torch.dtype = torch.float32, keep_fp32: bool = False,
              **extra) -> "TensorSpec":
        return cls(name, tuple(shape), tuple(shape), tuple(shape), dtype, keep_fp32, **extra)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis -> symbolic name (``{name}_{axis}``) for every axis whose size varies."""
        return {axis: f"{self.name}_{axis}" for axis, (lo, hi) in enumerate(zip(self.min_shape, self.max_shape))
                if lo != hi}

    def export_dtype(self, precision: str) -> torch.dtype:
        """The dtype of this tensor in an export of ``precision`` ("fp32" or "fp16")."""
        if precision == "fp16" and self.dtype == torch.float32 and not self.keep_fp32:
            return torch.float16
        return self.dtype

    def accepts(self, shape: Shape) -> bool:
        return len(shape) == len(self.min_shape) and all(
            lo <= s <= hi for s, lo, hi in zip(shape, self.min_shape, self.max_shape))

    def shape(self, which: str) -> Shape:
        """``"min"``, ``"opt"`` or ``"max"`` shape."""
        try:
            return {"min": self.min_shape, "opt": self.opt_shape, "max": self.max_shape}[which]
        except KeyError:
            raise ValueError(f"{self.name}: shape {which!r} is not one of 'min', 'opt', 'max'") from None

    def describe(self, precision: str | None = None) -> dict:
        """JSON-able description (manifests); dtype is the export dtype of ``precision`` when given."""
        dtype = self.export_dtype(precision) if precision else self.dtype
        return {"name": self.name, "dtype": str(dtype).removeprefix("torch."), "min_shape": list(self.min_shape),
                "opt_shape": list(self.opt_shape), "max_shape": list(self.max_shape),
                "dynamic_axes": {str(axis): name for axis, name in self.dynamic_axes.items()},
                "keep_fp32": self.keep_fp32}


@dataclass(frozen=True)
class Tolerance:
    """Acceptance of an export against the torch FP32 module on the spec's sample inputs.

    ``metric`` is ``"rel"`` (max |onnx - torch| / max |torch|, per output, must be <= ``limit``) or
    ``"psnr"`` (dB over outputs in [0, 1], must be >= ``limit``).
    """

    metric: str
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in ("rel", "psnr"):
            raise ValueError(f"tolerance metric {self.metric!r} is not 'rel' or 'psnr'")

    def passes(self, value: float) -> bool:
        return value <= self.limit if self.metric == "rel" else value >= self.limit

    def describe(self) -> dict:
        return {"metric": self.metric, "limit": self.limit, "passes_when": "<=" if self.metric == "rel" else ">="}


DEFAULT_TOLERANCES = MappingProxyType({"fp32": Tolerance("rel", 1e-4), "fp16": Tolerance("rel", 5e-2)})


@dataclass(frozen=True)
class NetworkSpec:
    """The interface of one exported network.

    Args:
        name: file/engine name, e.g. ``"denoising_unet_w4"``.
        component: the ``Models`` attribute whose module it wraps, e.g. ``"denoising_unet"``.
        inputs / outputs: tensors in positional order.
        keep_fp32: module-name patterns kept in float32 in the fp16 export, each with its reason.
            A pattern is an ``fnmatch`` glob over module paths relative to the component module
            (``"detector.stages.*.grn"``) or ``"class:Name"`` (every module of that class); the
            matching modules and everything inside them compute in float32.
        wrap: builds the traceable ``nn.Module`` (positional inputs -> tuple of outputs) from the module.
        tolerances: precision -> :class:`Tolerance` every export must meet (default: fp32 rel 1e-4,
            fp16 rel 5e-2).
        description: one line for manifests and logs.
    """

    name: str
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = field(compare=False, repr=False)
    keep_fp32: tuple[tuple[str, str], ...] = ()
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: DEFAULT_TOLERANCES, compare=False)
    description: str = ""

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def profile(self) -> dict[str, tuple[Shape, Shape, Shape]]:
        """TensorRT optimisation profile: input name -> (min, opt, max)."""
        return {t.name: (t.min_shape, t.opt_shape, t.max_shape) for t in self.inputs}

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances.get(precision, DEFAULT_TOLERANCES[precision])

    def describe(self, precision: str | None = None) -> dict:
        """JSON-able interface (manifests): tensors with shape ranges and (export) dtypes."""
        return {"name": self.name, "component": self.component, "description": self.description,
                "inputs": [t.describe(precision) for t in self.inputs],
                "outputs": [t.describe(precision) for t in self.outputs],
                "keep_fp32": [{"pattern": pattern, "reason": reason} for pattern, reason in self.keep_fp32]}

    def input(self, name: str) -> TensorSpec:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise KeyError(f"{self.name}: no input named {name!r}; inputs are {self.input_names}")

    def output(self, name: str) -> TensorSpec:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(f"{self.name}: no output named {name!r}; outputs are {self.output_names}")
