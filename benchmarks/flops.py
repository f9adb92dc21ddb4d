"""FLOPs of one streaming step: the full-size table (``flops_full_512.json``) or counted per network."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from personalive_trt.bench.options import BenchError, BenchOptions
from personalive_trt.choices import Backend, Decoder

if TYPE_CHECKING:  # annotations only
    from personalive_trt.bench.timing import StageProbe

FLOPS_JSON_ENV = "PERSONALIVE_FLOPS_JSON"
#: The full-size FLOP counts: a copy of the reference data's ``flops_full_512.json`` shipped as package data,
#: so the benchmark counts TFLOP/s where ``../shared`` is absent (the GPU check's machine, an installed wheel).
DEFAULT_FLOPS_JSON = Path(__file__).resolve().with_name("flops_full_512.json")
STEADY_ROLES = ("pose_encoder", "motion_encoder", "pose_guider", "denoising_unet", "vae_decoder")
_JSON_KEYS = {
    "pose_encoder": "step.motion_extractor (4 frames 256^2)",
    "motion_encoder": "step.motion_encoder (4 faces 224^2)",
    "pose_guider": "step.pose_guider (4 maps 512^2)",
    "vae_decoder": "step.vae_decode (4 frames 64^2 -> 512^2)",
}
_JSON_UNET = ("step.denoising_unet3d (16 frames, ref banks, 0 keyframes)",
              "step.denoising_unet3d (16 frames, ref banks, 3 keyframes)")


def flops_json_path() -> Path:
    return Path(os.environ.get(FLOPS_JSON_ENV, DEFAULT_FLOPS_JSON))


def reference_flops(keyframes: int) -> dict[str, int]:
    """Per-network FLOPs of one steady call at full size, 512, window 4, from the table (``flops_json_path``).

    The table ships with the package, so a missing or malformed one is an install defect: one-line error."""
    path = flops_json_path()
    try:
        data = json.loads(path.read_text())
        per_role = {role: int(data[key]) for role, key in _JSON_KEYS.items()}
        unet0, unet3 = int(data[_JSON_UNET[0]]), int(data[_JSON_UNET[1]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path}: cannot read the FLOP table ({type(exc).__name__}: {exc}); expected the "
                         f"JSON shipped as benchmarks/flops_full_512.json") from exc
    per_role["denoising_unet"] = unet0 + round((unet3 - unet0) * keyframes / 3)
    return per_role


def is_full_size(shapes) -> bool:
    """The released UNet widths (the only networks ``flops_full_512.json`` describes)."""
    return sorted({bank.channels for bank in shapes.banks}) == [320, 640, 1280]


def tiny_decoder_flops(shapes, config: dict | None = None) -> int:
    """FLOPs of one call's TAESD decode, 2 per multiply-accumulate; ``config``: the AutoencoderTiny config
    (default: the released one, madebyollin/taesd).

    Counted with FlopCounterMode on the meta device: shapes only, no weights and no arithmetic, so it costs
    nothing and works for every backend. At 512 and window 4: 565.4 GFLOP, against the full decoder's 10.1 TFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from personalive_trt.export.specs import TinyVaeDecoder
    from personalive_trt.models.synthetic import TAESD_FULL
    from personalive_trt.models.weights import build_module

    with torch.device("meta"):
        decoder = TinyVaeDecoder(build_module("taesd", {"taesd": config or TAESD_FULL}))
        latents = torch.empty(shapes.latent_frames(shapes.batch * shapes.window))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        decoder(latents)
    return int(counter.get_total_flops())


def flops_report(runtime, options: BenchOptions, probe: StageProbe | None, step_p50_ms: float) -> dict:
    config = runtime.config
    per_role, source = None, None
    if is_full_size(runtime.shapes) and config.resolution == 512 and config.window == 4:
        per_role = reference_flops(options.keyframes)
        source = f"reference_json ({flops_json_path()})"
        if config.vae is Decoder.TINY:  # the table has the full decoder only
            per_role["vae_decoder"] = tiny_decoder_flops(runtime.shapes)
            source += "; vae_decoder: TAESD at the released config, counted (FlopCounterMode, meta device)"
    if per_role is None and probe is not None and probe.flops and sum(probe.flops.values()) > 0:
        per_role = {role: probe.flops.get(role, 0) for role in STEADY_ROLES}
        source = "counted (FlopCounterMode, one eager call of the measured kind)"
    if per_role is None:
        why = ("engine backends cannot be counted and flops_full_512.json does not apply"
               if options.backend != Backend.TORCH else "flops_full_512.json does not apply and nothing was counted")
        return {"source": None, "per_step": None, "per_network": None, "tflops": None, "note": why}
    total = sum(per_role.values())
    return {"source": source, "per_step": total, "per_network": per_role,
            "tflops": round(total / (step_p50_ms * 1e-3) / 1e12, 6)}
