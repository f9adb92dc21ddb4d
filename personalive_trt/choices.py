"""The choices a user makes once (``--backend``, ``--vae``, ``--compile``, ``--cuda-graphs``, ``--reference-loop``),
as values.

Each is a :class:`~enum.StrEnum`: a member equals its string (``Backend.TORCH == "torch"``), prints and
serializes as it (``json.dumps``, f-strings, ``repr`` inside a dataclass's repr), so records written with strings
(``build.json``, cache keys) read and write exactly as before. An option is parsed once where it enters
(:meth:`Choice.parse`: one line naming the option, the value and what was expected) and carried as a member;
code asks the member (``backend.runs_engines``), never re-tests the string.
"""
from __future__ import annotations

from enum import StrEnum


class Choice(StrEnum):
    """A value of one option."""

    def __repr__(self) -> str:
        return repr(self.value)  # a dataclass holding one reads as it did with the plain string

    @classmethod
    def names(cls, last: str = ", ") -> str:
        """``"torch, onnxruntime, tensorrt"`` (``last=" or "``: ``"torch, onnxruntime or tensorrt"``)."""
        values = [member.value for member in cls]
        return ", ".join(values[:-1]) + last + values[-1] if len(values) > 1 else values[0]

    @classmethod
    def parse(cls, value: object, what: str):
        """The member for ``value`` (a member or its string), or ``ValueError`` "``what`` 'x': expected one of ..."."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{what} {value!r}: expected one of {cls.names()}") from None


class Backend(Choice):
    """What runs the networks: torch modules, or the engines ``personalive-trt build`` made."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"

    @property
    def runs_engines(self) -> bool:
        """Reads a built engines folder (``--engines``) instead of torch weights."""
        return self is not Backend.TORCH

    @property
    def capturable(self) -> bool:
        """Its calls can be captured in CUDA graphs (ONNX Runtime sessions cannot)."""
        return self is not Backend.ONNXRUNTIME


class Decoder(Choice):
    """The per-step decoder (``StreamConfig.vae``): the SD VAE decoder, or TAESD (``taesd/`` in the weights)."""

    FULL = "full"
    TINY = "tiny"


class CompileMode(Choice):
    """``--compile``: torch.compile the torch backend's per-step networks (see ``runtime/compile.py``)."""

    AUTO = "auto"  # only where the compile cache of this configuration is warm
    ON = "on"
    OFF = "off"


class GraphsMode(Choice):
    """``--cuda-graphs``: replay each step of the streaming runtime as captured CUDA graphs (torch and TensorRT)."""

    AUTO = "auto"  # on CUDA with a capturable backend; a replay that fails the self-check falls back to eager
    ON = "on"  # asked for: a failing self-check stops the start
    OFF = "off"


class Loop(Choice):
    """Which loop animates: the streaming runtime, or the plain-PyTorch reference loop (``--reference-loop``)."""

    RUNTIME = "runtime"
    REFERENCE = "reference"


class Mode(Choice):
    """``run --mode``: which of the original's two algorithms animates a driving file (docs/offline-mode.md)."""

    STREAM = "stream"  # the online loop, as the original's web demo runs it
    OFFLINE = "offline"  # the original's offline script, inference_offline.py


__all__ = ["Backend", "Choice", "CompileMode", "Decoder", "GraphsMode", "Loop", "Mode"]
