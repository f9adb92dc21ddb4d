"""What a session animates with, chosen once: the options ``run`` (file and live mode) and ``serve`` share, the
validate-first step they all take, and :func:`open_animator`.

:class:`AnimatorOptions` holds the choices (``--weights``, ``--backend``, ``--engines``, ``--device``,
``--dtype``, ``--window``, ``--vae``, ``--compile``, ``--cuda-graphs``, ``--no-self-check``, ``--seed``,
``--reference-loop``) as values, parsed once
where they enter; :class:`SessionOptions` adds the inputs of one session (file or live mode). :meth:`AnimatorOptions.check` is the one validate-first step (like diffusers'
``check_inputs``): everything that can be wrong is found before any network loads, each in one line, and what
it resolves (this machine's device and dtype, the weights, the stream configuration) comes back as an
:class:`Animation` ready to :meth:`~Animation.open`.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from personalive_trt.choices import Backend, CompileMode, Decoder, GraphsMode, Loop
from personalive_trt.config import StreamConfig
from personalive_trt.devices import canonical_device, describe, resolve_device
from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR
from personalive_trt.engines.known_answers import read_record
from personalive_trt.engines.networks import Networks
from personalive_trt.models.weights import SYNTHETIC_NOTICE, parse_weights_spec, resolve_weights, validate_weights_folder
from personalive_trt.runtime.compile import require_compiler, resolve_compile
from personalive_trt.runtime.open import compile_logged, open_networks
from personalive_trt.runtime.reference_loop import Animator
from personalive_trt.runtime.self_check import open_checked
from personalive_trt.runtime.stream import StreamRuntime


@dataclass(frozen=True, kw_only=True)
class AnimatorOptions:
    """How one session's animator runs (every field is an option of ``run`` and ``serve``)."""

    weights: str = "auto"  # a folder, synthetic[:size], or auto (./pretrained_weights if present, else synthetic)
    backend: Backend = Backend.TORCH
    engines: Path | None = None  # the engines folder of `build` (default ./engines_cache)
    device: str = "auto"  # the GPU when there is one (personalive_trt.devices)
    dtype: str = "auto"  # follows the device unless given
    window: int = 4
    resolution: int = 512
    vae: Decoder = Decoder.FULL  # per-step decoder, see StreamConfig.vae
    compile: CompileMode = CompileMode.OFF  # torch.compile: auto (only with a warm cache), on, off
    seed: int = 42
    reference_loop: bool = False  # animate with the plain-PyTorch reference loop (Animator), not the runtime
    cuda_graphs: GraphsMode = GraphsMode.AUTO  # the streaming runtime's captured steps (runtime/self_check.py)
    self_check: bool = True  # check the fast path against a trusted one before the first frame (--no-self-check)

    def __post_init__(self) -> None:
        for name, choice, option in (("backend", Backend, "--backend"), ("vae", Decoder, "--vae"),
                                     ("compile", CompileMode, "--compile"), ("cuda_graphs", GraphsMode,
                                                                             "--cuda-graphs")):
            object.__setattr__(self, name, choice.parse(getattr(self, name), option))

    @property
    def animator_loop(self) -> Loop:
        return Loop.REFERENCE if self.reference_loop else Loop.RUNTIME

    def config(self) -> StreamConfig:
        return StreamConfig(window=self.window, resolution=self.resolution, vae=self.vae)

    def check_choices(self) -> StreamConfig:
        """What holds on any machine: the stream configuration and the combination of choices."""
        config = self.config()
        resolve_compile(self.compile, self.backend, loop=self.animator_loop)  # --compile on with an engine backend, ...
        if self.cuda_graphs is GraphsMode.ON:
            if self.reference_loop:
                raise ValueError("--cuda-graphs on: the streaming runtime replays captured steps, not --reference-loop")
            if not self.backend.capturable:
                raise ValueError(f"--cuda-graphs on: --backend {self.backend} cannot be captured in CUDA graphs "
                                 "(use --backend torch or tensorrt, or --cuda-graphs auto)")
        return config

    def check(self) -> Animation:
        """The validate-first step: :meth:`check_choices`, then this machine (TensorRT installed, the device and
        dtype, a compiler for ``--compile on``) and the weights spec. Nothing is loaded."""
        config = self.check_choices()
        if self.backend is Backend.TENSORRT:
            from personalive_trt.engines.backends import require_tensorrt

            require_tensorrt()  # one line, before any work
        device, dtype = resolve_device(self.device, self.dtype, self.backend)
        if self.compile is CompileMode.ON:
            require_compiler(device)  # Triton on CUDA, a C++ compiler on the CPU
        if self.cuda_graphs is GraphsMode.ON and device.type != "cuda":
            raise ValueError(f"--cuda-graphs on: CUDA graphs need a CUDA device, and this run is on {device} "
                             "(use --cuda-graphs auto or off)")
        return Animation(options=self, weights=resolve_weights(self.weights), device=device, dtype=dtype,
                         config=config)

    def for_replicas(self) -> AnimatorOptions:
        """These options with the weights and engines folders absolute: the same paths on every node of a cluster
        (``serve --ray``), where each replica takes :meth:`check` itself, on its own GPU."""
        weights = resolve_weights(self.weights)
        weights = str(Path(weights).resolve()) if Path(weights).is_dir() else weights
        engines = self.engines.resolve() if self.engines is not None else None
        return dataclasses.replace(self, weights=weights, engines=engines)


@dataclass(frozen=True, kw_only=True)
class SessionOptions(AnimatorOptions):
    """What file and live mode share: the inputs of one session and the animator."""

    reference: str  # a portrait image file, or "sample"
    driving: str  # a video file or "sample" (file mode), or a live source (live mode)
    max_frames: int | None = None  # file mode: the first N driving frames; live mode: N output frames
    crop: bool = True  # frame the face (--no-crop: resize whole frames)
    side_by_side: Path | None = None  # --mode offline only (filemode/offline_run.py); refused here
    keyframe_limit: int | None = None  # --mode offline only; refused here

    def check(self) -> Animation:
        self.check_mode()
        animation = super().check()
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"--max-frames {self.max_frames}: expected a positive number of frames")
        return animation

    def check_mode(self) -> None:
        """What this mode refuses, before anything else is looked at: here the options of ``--mode offline``
        (the offline mode's options override this)."""
        given = [option for option, value in (("--side-by-side", self.side_by_side),
                                              ("--keyframe-limit", self.keyframe_limit)) if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)}: only with --mode offline (the original's offline script)")


@dataclass(frozen=True)
class Animation:
    """What :meth:`AnimatorOptions.check` resolved on this machine; :meth:`open` loads the networks."""

    options: AnimatorOptions
    weights: str
    device: torch.device
    dtype: torch.dtype
    config: StreamConfig

    def open(self) -> Animator | StreamRuntime:
        """A new animator (every call loads its own networks: ``serve`` opens one per session slot)."""
        o = self.options
        return open_animator(self.weights, backend=o.backend, engines=o.engines, device=self.device,
                             dtype=self.dtype, seed=o.seed, config=self.config, loop=o.animator_loop, compile=o.compile,
                             cuda_graphs=o.cuda_graphs, self_check=o.self_check)


def to_stderr(line: str) -> None:
    """Where the open path says what it does (backend, device, compile, self-check): the user's terminal."""
    print(line, file=sys.stderr)


def open_replica_animator(options: AnimatorOptions) -> Animator | StreamRuntime:
    """``serve --ray``: runs on each replica, so its device is resolved there, where its GPU is."""
    return options.check().open()


def open_animator(
    weights: str,
    backend: Backend | str = Backend.TORCH,
    engines: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 42,
    config: StreamConfig | None = None,
    loop: Loop | str = Loop.RUNTIME,
    compile: CompileMode | str = CompileMode.OFF,  # noqa: A002
    cuda_graphs: GraphsMode | str = GraphsMode.AUTO,
    self_check: bool = True,
) -> Animator | StreamRuntime:
    """Load the networks of ``weights`` (a folder or ``synthetic[:size]``) for ``backend`` and
    return a loop ready for ``fuse_reference``: the :class:`StreamRuntime` (``loop="runtime"``,
    CUDA graphs where the backend allows) or the reference :class:`Animator` (``"reference"``).
    ``compile``: ``auto``/``on``/``off``, see :func:`~personalive_trt.runtime.compile.resolve_compile`.
    The streaming runtime is opened through the start-up self-check
    (:func:`~personalive_trt.runtime.self_check.open_checked`, skipped with ``self_check=False``): a fast path
    chosen by default that fails it falls back with one line; one asked for (``--compile on``, ``--cuda-graphs
    on``, an engine backend) raises :class:`~personalive_trt.runtime.self_check.SelfCheckError`.
    Prints where it runs and the synthetic-weights notice."""
    loop = Loop.parse(loop, "--loop")
    backend = Backend.parse(backend, "--backend")
    cuda_graphs = GraphsMode.parse(cuda_graphs, "--cuda-graphs")
    compile = CompileMode.parse(compile, "--compile")  # noqa: A001
    config = config or StreamConfig()
    if loop is Loop.REFERENCE:
        return Animator(open_session_networks(weights, backend, engines, device, dtype, config, loop, compile), config,
                        seed=seed)
    return open_checked_runtime(weights, backend, engines, device, dtype, config, compile, cuda_graphs, self_check,
                                seed=seed)


def open_checked_runtime(
    weights: str,
    backend: Backend,
    engines: Path | None,
    device: torch.device | str,
    dtype: torch.dtype,
    config: StreamConfig,
    compile: CompileMode,  # noqa: A002
    cuda_graphs: GraphsMode,
    self_check: bool,
    runtime=None,
    **runtime_options,
) -> StreamRuntime:
    """The streaming runtime (``runtime``: its class or factory, default :class:`StreamRuntime`; the offline mode
    passes :class:`~personalive_trt.runtime.offline_stream.OfflineStreamRuntime` for its clip) opened through the
    start-up self-check (:func:`~personalive_trt.runtime.self_check.open_checked`; ``self_check=False`` skips it),
    its networks opened as :func:`open_session_networks` opens them. ``runtime_options``: the runtime's own
    (``seed``, ``frames``, ``keyframe_limit``)."""
    # The self-check compares the compiled networks with the eager ones: open those, and compile in the check.
    networks = open_session_networks(weights, backend, engines, device, dtype, config, Loop.RUNTIME, CompileMode.OFF)
    options = resolve_compile(compile, backend, engines, None if backend.runs_engines else networks, Loop.RUNTIME)
    explicit = {feature: option for feature, option, mode in (("compile", "--compile on", compile),
                                                              ("graphs", "--cuda-graphs on", cuda_graphs))
                if mode == "on"}
    engines_dir = Path(engines or DEFAULT_ENGINES_DIR)
    started = open_checked(
        networks, config, backend=backend.value,
        compile=None if options is None else lambda eager: compile_logged(eager, options, to_stderr),
        graphs={GraphsMode.AUTO: None, GraphsMode.ON: True, GraphsMode.OFF: False}[cuda_graphs],
        explicit=explicit, engines_dir=engines_dir,
        known_answers=read_record(engines_dir) if backend.runs_engines else None,
        check=self_check, say=to_stderr, runtime=runtime, **runtime_options)
    return started.runtime


def open_session_networks(
    weights: str,
    backend: Backend | str,
    engines: Path | None,
    device: torch.device | str,
    dtype: torch.dtype,
    config: StreamConfig,
    loop: Loop | str,
    compile: CompileMode | str,  # noqa: A002
) -> Networks:
    """The networks of :func:`open_animator` (for a loop it does not wrap, e.g. the offline mode's): prints
    where they run and the synthetic-weights notice, checks a weights folder, then opens them."""
    backend = Backend.parse(backend, "--backend")
    device = canonical_device(device)
    print(f"running on {describe(device, dtype)}, {backend} backend", file=sys.stderr)
    kind, location = parse_weights_spec(weights)
    if kind == "synthetic":
        print(SYNTHETIC_NOTICE.format(spec=f"{weights}"), file=sys.stderr)
    else:
        validate_weights_folder(Path(location))
    return open_networks(backend, config=config, device=device, dtype=dtype, weights=weights, engines=engines,
                         compile=compile, loop=loop, log=to_stderr)


__all__ = ["Animation", "AnimatorOptions", "SessionOptions", "open_animator", "open_checked_runtime",
           "open_replica_animator", "open_session_networks"]
