"""Downloading the released weights from the Hugging Face Hub into the released layout."""
from __future__ import annotations

import shutil
from pathlib import Path

from personalive_trt.models.weights import BASE, PERSONALIVE, TAESD_DIR, VAE_DIR

# (hub repository, file in the repository, destination relative to the weights folder)
WEIGHT_FILES = (
    *(("lambdalabs/sd-image-variations-diffusers", f, f"{BASE}/{f}") for f in (
        "unet/config.json", "unet/diffusion_pytorch_model.bin",
        "image_encoder/config.json", "image_encoder/pytorch_model.bin", "model_index.json")),
    *(("stabilityai/sd-vae-ft-mse", f, f"{VAE_DIR}/{f}") for f in ("config.json", "diffusion_pytorch_model.bin")),
    *(("huaichang/PersonaLive", f"pretrained_weights/personalive/{name}.pth", f"{PERSONALIVE}/{name}.pth")
      for name in ("denoising_unet", "reference_unet", "motion_encoder", "pose_guider", "temporal_module",
                   "motion_extractor")),
    # The tiny decoder of `--vae tiny` (diffusers layout, ~10 MB); last, so the required files come first.
    *(("madebyollin/taesd", f, f"{TAESD_DIR}/{f}") for f in ("config.json", "diffusion_pytorch_model.safetensors")),
)


def download_weights(directory: str | Path) -> list[Path]:
    """Fetch every released file that is not already present; returns the files written.

    Raises ``RuntimeError`` naming the repository and file when the Hub cannot be reached.
    """
    from huggingface_hub import hf_hub_download

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / ".download"
    written = []
    for repo, remote, local in WEIGHT_FILES:
        target = root / local
        if target.is_file():
            continue
        try:
            fetched = Path(hf_hub_download(repo_id=repo, filename=remote, local_dir=staging))
        except Exception as exc:  # noqa: BLE001 -- hub/network errors have many types; re-raised with context
            raise RuntimeError(
                f"cannot download {repo}/{remote} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "check the network or HF_HUB_OFFLINE, or copy the files into "
                f"{root} by hand (layout: see README)"
            ) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(fetched), target)  # whole files only: hf_hub_download finishes before the move
        written.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return written
