"""Import paths from before the package was grouped into rooms by stage (issue 24), kept working.

``personalive_trt.pipeline``, ``.networks``, ``.weights`` and the other modules that moved whole are the moved
module itself under its old name (:data:`MODULES`): ``from personalive_trt.pipeline import Animator`` imports
``personalive_trt.runtime.reference_loop.Animator``. ``personalive_trt.animate``, whose names went to several
homes, forwards each of them (:data:`NAMES`); any other name imported from it fails in one line that says where
the file mode went. New code imports the new paths (the layout is in the README's "Layout" section).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

#: Old module -> the module it became.
MODULES = {
    "personalive_trt.pipeline": "personalive_trt.runtime.reference_loop",
    "personalive_trt.networks": "personalive_trt.engines.networks",
    "personalive_trt.weights": "personalive_trt.models.weights",
    "personalive_trt.synthetic": "personalive_trt.models.synthetic",
    "personalive_trt.keypoints": "personalive_trt.models.keypoints",
    "personalive_trt.scheduler": "personalive_trt.models.scheduler",
    "personalive_trt.framing": "personalive_trt.media.framing",
    "personalive_trt.sample": "personalive_trt.media.sample",
    "personalive_trt.buildmem": "personalive_trt.build.memory",
    "personalive_trt.hub": "personalive_trt.build.download",
    "personalive_trt.export.spec": "personalive_trt.export.interface",
}

#: Old module whose names moved to several modules -> {name: the module that has it now}.
NAMES = {
    "personalive_trt.animate": {
        **dict.fromkeys(("RunOptions", "RunStats", "animate_file", "stream_video", "chunked"),
                        "personalive_trt.filemode.animate"),
        **dict.fromkeys(("prefetched", "BackgroundWriter"), "personalive_trt.filemode.threads"),
        **dict.fromkeys(("SessionOptions", "open_animator"), "personalive_trt.runtime.animator"),
        **dict.fromkeys(("resolve_weights", "DEFAULT_WEIGHTS_DIR"), "personalive_trt.models.weights"),
    },
}


class ForwardingModule(types.ModuleType):
    """An old module whose names live elsewhere now: each known name is fetched from its new module."""

    def __init__(self, name: str, names: dict[str, str]) -> None:
        super().__init__(name, f"Moved (issue 24): {', '.join(sorted(set(names.values())))}.")
        self._names = names

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._names:
            # ImportError, not AttributeError: `from old import name` would replace an AttributeError's message.
            raise ImportError(f"{self.__name__}.{name} no longer exists: {self.__name__} moved to "
                              f"{', '.join(sorted(set(self._names.values())))}")
        return getattr(importlib.import_module(self._names[name]), name)

    def __dir__(self) -> list[str]:
        return sorted(self._names)


class OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module names of :data:`MODULES` and :data:`NAMES` (no other name)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MODULES or fullname in NAMES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        if spec.name in MODULES:
            return importlib.import_module(MODULES[spec.name])  # the same module object under its old name
        return ForwardingModule(spec.name, NAMES[spec.name])

    def exec_module(self, module) -> None:
        return None  # nothing to run: the module was imported (or built) by create_module


def install() -> None:
    """Add the finder once (``personalive_trt/__init__`` calls this)."""
    if not any(isinstance(finder, OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(OldPathFinder())
