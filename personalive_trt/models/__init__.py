"""PersonaLive's networks, checkpoint-compatible with the released weights, and what surrounds them in torch.

The network classes below are imported lazily, so that loading one network does not import every other one.
Beside them: :mod:`.weights` (strict loading of a weights folder, ``Models``, ``load_models``, the synthetic
weights' entry points), :mod:`.synthetic` (deterministic random weights, the reference data's convention),
:mod:`.keypoints` (the motion extractor's keypoints -> keypoint maps, face boxes and crops, on the device) and
:mod:`.scheduler` (the DDIM schedule).
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
