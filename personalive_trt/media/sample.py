"""The built-in sample media, so ``personalive-trt run --reference sample --driving sample`` works out of the box.

Both files ship inside the package (``personalive_trt/assets/``, declared as package data) and are produced
by ``scripts/make_sample.py`` from scikit-image's public-domain ``astronaut`` photo (see
``assets/ATTRIBUTION.txt``).
"""
from __future__ import annotations

from pathlib import Path

from personalive_trt.media import MediaError

__all__ = ["ASSETS_DIR", "SAMPLE_NAME", "resolve_media", "sample_driving", "sample_reference"]

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
#: The command-line value that stands for the built-in sample.
SAMPLE_NAME = "sample"

_SAMPLES = {"reference": "sample_reference.png", "driving": "sample_driving.mp4"}


def _asset(name: str) -> Path:
    path = ASSETS_DIR / name
    if not path.is_file():
        raise MediaError(f"{path}: built-in sample is missing; the package install is incomplete "
                         "(regenerate it with scripts/make_sample.py)")
    return path


def sample_reference() -> Path:
    """The sample portrait: scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain), 512x512 PNG."""
    return _asset(_SAMPLES["reference"])


def sample_driving() -> Path:
    """The sample driving clip: 2.4 s, 25 fps, 512x512 H.264 + AAC, the astronaut nodding and turning."""
    return _asset(_SAMPLES["driving"])


def resolve_media(value: str, kind: str) -> Path:
    """Turn a ``--reference`` / ``--driving`` value into a path.

    ``"sample"`` gives the built-in sample of that ``kind`` ("reference" or "driving"); anything else is a
    path that must exist (MediaError naming it otherwise). A real file called ``sample`` in the current
    folder wins over the built-in one, so a user's file is never silently replaced.
    """
    if kind not in _SAMPLES:
        raise ValueError(f"kind must be one of {sorted(_SAMPLES)}, got {kind!r}")
    path = Path(value).expanduser()
    if value == SAMPLE_NAME and not path.exists():
        return _asset(_SAMPLES[kind])
    if not path.exists():
        raise MediaError(f"{path}: {kind} file not found (use '{SAMPLE_NAME}' for the built-in {kind})")
    if not path.is_file():
        raise MediaError(f"{path}: {kind} is not a file")
    return path
