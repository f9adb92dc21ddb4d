"""personalive-trt: a low-latency streaming engine for PersonaLive portrait animation.

Python API::

    import personalive_trt
    models = personalive_trt.load_models("pretrained_weights", device="cuda", dtype=torch.float16)
    anim = personalive_trt.Animator(models, personalive_trt.StreamConfig())
    anim.fuse_reference(image)          # (512, 512, 3) uint8 RGB
    out = anim.step(frames)             # (4, 512, 512, 3) uint8 -> (4, 512, 512, 3) uint8
"""
from personalive_trt.config import StreamConfig
from personalive_trt.runtime.reference_loop import Animator, NonFiniteError
from personalive_trt.models.weights import Models, WeightsError, load_models, synthetic_models

__version__ = "0.1.0"
__all__ = ["Animator", "Models", "NonFiniteError", "StreamConfig", "WeightsError", "load_models",
           "synthetic_models", "__version__"]
