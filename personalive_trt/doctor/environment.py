"""What the doctor reports about the machine: OS, Python, GPU, driver, CUDA, the packages the paths need, cameras.

Every fact is read without loading a network. A missing optional package is a ``skipped`` line with the command
that installs it, never a failure; a package `run` needs by default (mediapipe for the face framing, PyAV for
video files) missing is a failure. Cameras are each opened in a child process under a short timeout, all at
once, so a camera whose driver hangs costs the report :data:`CAMERA_TIMEOUT_S` seconds at most, never a hang.
"""
from __future__ import annotations

import glob
import importlib
import importlib.metadata
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field

#: Seconds every camera gets to open and deliver one frame (they are probed in parallel).
CAMERA_TIMEOUT_S = 4.0
#: Camera indices probed where there are no /dev/video* nodes to list (Windows, macOS).
CAMERA_INDICES = (0, 1, 2, 3)


@dataclass(frozen=True)
class Package:
    """One package: its version, or why it is absent and the command that installs it."""

    name: str
    version: str | None
    needed_for: str
    install: str
    required: bool = False  # `run`'s default path needs it (missing: a failure, not a skip)
    detail: str = ""  # e.g. ONNX Runtime's providers, or the import error

    @property
    def status(self) -> str:
        if self.version is not None:
            return "ok"
        return "failed" if self.required else "skipped"

    def line(self) -> str:
        if self.version is not None:
            return f"{self.name} {self.version}" + (f" ({self.detail})" if self.detail else "")
        reason = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: not available{reason}; {self.install} (needed for {self.needed_for})"

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "status": self.status, "needed_for": self.needed_for,
                "install": None if self.version else self.install, "detail": self.detail, "line": self.line()}


#: name -> (import name, needed for, install command, required by run's default path)
PACKAGES = {
    "TensorRT": ("tensorrt", "--backend tensorrt", 'pip install "personalive-trt[tensorrt]"', False),
    "ONNX Runtime": ("onnxruntime", "--backend onnxruntime", 'pip install "personalive-trt[onnx]" (on a GPU: '
                     '"personalive-trt[gpu]")', False),
    "Triton": ("triton", "--compile on a GPU", "pip install triton (the build matching torch)", False),
    "mediapipe": ("mediapipe", "face framing (run without --no-crop)", 'pip install "mediapipe==0.10.14"', True),
    "PyAV": ("av", "reading and writing video files", 'pip install "av>=12"', True),
}


def package(name: str) -> Package:
    module_name, needed_for, install, required = PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) == module_name
        return Package(name, None, needed_for, install, required, "" if missing else f"import failed: {exc}")
    except OSError as exc:  # installed, its shared libraries do not load (TensorRT without its CUDA libraries)
        return Package(name, None, needed_for, install, required, f"import failed: {exc}")
    version = str(getattr(module, "__version__", None) or _distribution_version(module_name))
    detail = ""
    if module_name == "onnxruntime":
        providers = module.get_available_providers()
        detail = "providers: " + ", ".join(p.removesuffix("ExecutionProvider") for p in providers)
    if getattr(module, "STUB", False):
        detail = "the tests' stand-in, not TensorRT"
    return Package(name, version, needed_for, install, required, detail)


def _distribution_version(module_name: str) -> str:
    try:
        return importlib.metadata.version(module_name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: str
    memory_free: int
    memory_total: int

    def line(self) -> str:
        return (f"cuda:{self.index} {self.name}, compute capability {self.capability}, "
                f"{self.memory_free / 2**30:.1f} of {self.memory_total / 2**30:.1f} GiB free")


@dataclass
class Environment:
    os: str
    python: str
    torch: str
    torch_cuda: str | None  # the CUDA runtime torch was built with; None: a CPU build
    cuda_available: bool
    gpus: list[Gpu]
    driver: str | None
    driver_error: str | None
    packages: list[Package]
    cameras: list["Camera"] = field(default_factory=list)

    def torch_line(self) -> str:
        build = f"CUDA {self.torch_cuda} build" if self.torch_cuda else "CPU build (no CUDA)"
        seen = "sees a GPU" if self.cuda_available else "sees no GPU"
        return f"torch {self.torch}, {build}, {seen}"

    def as_dict(self) -> dict:
        return {"os": self.os, "python": self.python, "torch": self.torch, "torch_cuda": self.torch_cuda,
                "cuda_available": self.cuda_available, "driver": self.driver, "driver_error": self.driver_error,
                "gpus": [vars(g) | {"line": g.line()} for g in self.gpus],
                "packages": [p.as_dict() for p in self.packages],
                "cameras": [vars(c) | {"line": c.line()} for c in self.cameras]}


def environment(cameras: bool = True) -> Environment:
    """The machine's facts (see the module docstring); ``cameras=False`` skips the camera probe."""
    import torch

    gpus = []
    available = torch.cuda.is_available()
    for index in range(torch.cuda.device_count() if available else 0):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(Gpu(index, props.name, f"{props.major}.{props.minor}", int(free), int(total)))
    driver, driver_error = None, None
    if available or torch.version.cuda:
        from personalive_trt.bench.gpu_check import nvidia_smi

        smi = nvidia_smi()
        if "error" in smi:
            driver_error = f"nvidia-smi: {smi['error']}"
        elif smi["gpus"]:
            driver = smi["gpus"][0].get("driver_version")
    return Environment(os=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                       torch_cuda=torch.version.cuda, cuda_available=available, gpus=gpus, driver=driver,
                       driver_error=driver_error, packages=[package(name) for name in PACKAGES],
                       cameras=probe_cameras() if cameras else [])


# ---- cameras ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Camera:
    source: str  # /dev/videoN or an OpenCV index
    status: str  # "ok", "failed" (does not open or deliver a frame), "timed out"
    detail: str

    def line(self) -> str:
        return f"{self.source}: {self.detail}"


_PROBE = r"""
import sys, cv2
source = sys.argv[1]
capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
if not capture.isOpened():
    print("does not open"); sys.exit(1)
ok, frame = capture.read()
capture.release()
if not ok or frame is None:
    print("opens, but delivered no frame (in use by another program, or a metadata node)"); sys.exit(1)
print(f"opens, {frame.shape[1]}x{frame.shape[0]}")
"""


def camera_sources() -> list[str]:
    """``/dev/video*`` on Linux; elsewhere the first OpenCV indices (there is no device list to read)."""
    if sys.platform.startswith("linux"):
        return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    return [str(i) for i in CAMERA_INDICES]


def probe_cameras(sources: list[str] | None = None, timeout: float = CAMERA_TIMEOUT_S,
                  python: str = sys.executable) -> list[Camera]:
    """Open every camera in its own child process, all at once, each killed after ``timeout`` seconds."""
    sources = camera_sources() if sources is None else sources
    children = {s: subprocess.Popen([python, "-c", _PROBE, s], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for s in sources}
    deadline = time.monotonic() + timeout
    found = []
    for source, child in children.items():
        try:
            out, err = child.communicate(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            child.kill()  # its pipes are not read again: a grandchild holding them cannot block the report
            child.wait()
            child.stdout.close()
            child.stderr.close()
            found.append(Camera(source, "timed out", f"did not answer in {timeout:g} s (a hung driver?); skipped"))
            continue
        lines = out.strip().splitlines() or err.strip().splitlines()[-1:] or [f"probe exited {child.returncode}"]
        found.append(Camera(source, "ok" if child.returncode == 0 else "failed", lines[-1]))
    return found


__all__ = ["CAMERA_TIMEOUT_S", "Camera", "Environment", "Gpu", "Package", "environment", "package", "probe_cameras"]
