"""Packaged configuration files (``personalive_trt.configs``).

``unet3d.yaml`` holds the keyword arguments that turn the base SD UNet config
(``sd-image-variations-diffusers/unet/config.json``) into PersonaLive's denoising UNet.
"""
from importlib import resources
from pathlib import Path


def config_path(name: str) -> Path:
    """Path of a packaged config file, e.g. ``config_path("unet3d.yaml")``."""
    path = Path(str(resources.files(__name__).joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"packaged config {name!r} not found at {path}")
    return path
