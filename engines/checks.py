"""One comparison of a path against a trusted one: what the self-check and the doctor report, in one line.

Shared by the known-answer check of engines (:mod:`.known_answers`) and the runtime's start-up self-check
(:mod:`personalive_trt.runtime.self_check`), so both fail in the same words.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Comparison:
    """One check: a fast path against a trusted one.

    Args:
        what (`str`): the fast path, e.g. ``"CUDA graphs"`` or ``"tensorrt denoising_unet_w4 (fp16)"``.
        against (`str`): the trusted path, e.g. ``"the same call run eagerly"``.
        suspects (`tuple[str]`): the features this check blames when it fails, most likely first
            (``"compile"``, ``"graphs"``, ``"backend"``; see :mod:`personalive_trt.runtime.self_check`).
        error (`float`, *optional*): the measured value (``metric``); None when the fast path raised.
        tolerance (`float`): the limit that passes.
        failure (`str`, *optional*): the fast path's exception, ``"Type: first line"``.
        seconds (`float`): what the check took.
        metric (`str`, defaults to ``"rel"``): ``"rel"``, max |fast - trusted| / max |trusted| (passes at or below
            ``tolerance``; ``inf`` when the fast path is not finite where the trusted one is), or ``"psnr"``, dB
            over values in [0, 1] (passes at or above).
    """

    what: str
    against: str
    suspects: tuple[str, ...]
    error: float | None
    tolerance: float
    failure: str | None = None
    seconds: float = 0.0
    metric: str = "rel"

    @property
    def ok(self) -> bool:
        if self.failure is not None or self.error is None:
            return False
        return self.error <= self.tolerance if self.metric == "rel" else self.error >= self.tolerance

    def describe(self) -> str:
        """``CUDA graphs: max relative error 3.1e-01 > 1e-05 against the same call run eagerly`` (one line)."""
        if self.failure is not None:
            return f"{self.what} raised {self.failure}"
        if self.metric == "psnr":
            verdict = ">=" if self.ok else "<"
            return f"{self.what}: PSNR {self.error:.1f} dB {verdict} {self.tolerance:.0f} dB against {self.against}"
        verdict = "<=" if self.ok else ">"
        return (f"{self.what}: max relative error {self.error:.1e} {verdict} {self.tolerance:.0e} against "
                f"{self.against}")

    def as_dict(self) -> dict:
        return {"what": self.what, "against": self.against, "ok": self.ok, "metric": self.metric,
                "error": None if self.error is None or math.isinf(self.error) else self.error,
                "error_text": None if self.error is None else f"{self.error:.3g}", "tolerance": self.tolerance,
                "failure": self.failure, "seconds": round(self.seconds, 3), "line": self.describe()}


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (a compiler's or TensorRT's multi-line error, on one line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def relative_error(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> float:
    """max over outputs of ``max |actual - expected| / max |expected|``, compared where ``expected`` is finite;
    ``inf`` where ``actual`` is not finite there or has another shape (a NaN never passes as a small error).
    Reads device values on the host: for start-up checks and reports, never the hot loop."""
    worst = 0.0
    for name, reference in expected.items():
        value = actual[name].detach().double().cpu()
        reference = reference.detach().double().cpu()
        if value.shape != reference.shape:
            return math.inf
        finite = torch.isfinite(reference)
        if not bool(finite.any()):
            continue
        if not bool(torch.isfinite(value[finite]).all()):
            return math.inf
        scale = max(float(reference[finite].abs().max()), 1e-12)
        worst = max(worst, float((value[finite] - reference[finite]).abs().max()) / scale)
    return worst


def psnr(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> float:
    """The lowest PSNR (dB, values in [0, 1]) over outputs; ``-inf`` where ``actual`` is not finite."""
    worst = math.inf
    for name, reference in expected.items():
        value = actual[name].detach().double().cpu()
        if value.shape != reference.shape or not bool(torch.isfinite(value).all()):
            return -math.inf
        mse = float(((value - reference.detach().double().cpu()) ** 2).mean())
        worst = min(worst, math.inf if mse == 0 else 10 * math.log10(1.0 / mse))
    return worst


__all__ = ["Comparison", "one_line", "psnr", "relative_error"]
