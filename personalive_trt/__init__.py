"""personalive-trt: a low-latency streaming engine for PersonaLive portrait animation.

Python API (the README's "Python API" section says more)::

    import personalive_trt
    models = personalive_trt.load_models("pretrained_weights", device="cuda", dtype=torch.float16)
    rt = personalive_trt.StreamRuntime.from_models(models, personalive_trt.StreamConfig())
    rt.fuse_reference(image)            # (512, 512, 3) uint8 RGB
    out = rt.step(frames)               # (4, 512, 512, 3) uint8 -> (4, 512, 512, 3) uint8

``Animator`` is the reference loop (plain PyTorch, the same methods and frames); ``StreamRuntime`` is the one
``run`` and ``serve`` use.
"""
from personalive_trt import old_paths
from personalive_trt.config import StreamConfig
from personalive_trt.models.weights import Models, WeightsError, load_models, synthetic_models
from personalive_trt.runtime.reference_loop import Animator, NonFiniteError
from personalive_trt.runtime.stream import StreamRuntime

old_paths.install()

__version__ = "0.1.0"
__all__ = ["Animator", "Models", "NonFiniteError", "StreamConfig", "StreamRuntime", "WeightsError", "load_models",
           "synthetic_models", "__version__"]
