"""``personalive-trt build`` and what it needs beyond the export and engine stages.

* :mod:`.driver` -- :func:`~.driver.build`: export every network to verified ONNX and build the engines;
* :mod:`.memory` -- will the build fit? its estimated peak host memory against what this process may use;
* :mod:`.download` -- the released weights from the Hugging Face Hub (``weights download``);
* :mod:`.compile_cache` -- ``build --backend torch --compile``: fill the torch.compile cache.

Reading a built engines folder back (``build.json``, :func:`load_networks`) lives with the engines,
:mod:`personalive_trt.engines.folder`; its names are still importable from here, as before the restructuring.
"""
from importlib import import_module

#: Names importable from ``personalive_trt.build`` (its API when it was one module) -> where they are.
_FORWARDED = {
    "build": "personalive_trt.build.driver",
    "DEFAULT_PRECISION": "personalive_trt.build.driver",
    **dict.fromkeys(("BUILD_FILE", "BuildError", "BuildRecord", "DEFAULT_ENGINES_DIR", "engine_paths", "load_networks",
                     "onnx_paths", "read_build", "require_onnx", "weights_fingerprint"),
                    "personalive_trt.engines.folder"),
}


def __getattr__(name: str):
    if name not in _FORWARDED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_FORWARDED[name]), name)
