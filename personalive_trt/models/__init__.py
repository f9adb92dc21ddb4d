"""PersonaLive's networks, checkpoint-compatible with the released weights.

Imported lazily so that loading one network does not import every other one.
"""
from importlib import import_module

_WHERE = {
    "ReferenceUNet": "reference_unet",
    "UNet3DConditionModel": "unet3d",
    "MotionEncoder": "motion_encoder",
    "PoseGuider": "pose_guider",
    "MotionExtractor": "motion_extractor",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
