"""The start-up self-check: before the first real frame, the fast path is checked against a slower trusted one.

No line of the CUDA-graph, fp16, compiled or TensorRT paths can be tested here on the GPUs users have, and
each of them can compute garbage without raising: a graph that replays stale addresses, a compiled kernel
that miscompiles on a new architecture, a TensorRT engine built for another GPU. So the loop checks itself
where it runs, on seeded inputs (never zeros, which hide most wrong bindings), and either falls back to the
safe path in one line or stops in one line; it never streams garbage.

What is compared (each on the same state and the same noise, so only the path differs):

* **CUDA graphs**: one captured call replayed against the same call run eagerly (``graphs``);
* **torch.compile**: the same call through the compiled networks against the eager networks (``compile``);
* **ONNX Runtime / TensorRT**: every network against the known answers `build` stored in the engines folder
  (:mod:`personalive_trt.engines.known_answers`); a folder built before `build` stored them gets one line saying
  so ("rebuild to enable the self-check"), and runs unchecked.

Fallback order: compile + graphs -> graphs -> eager (:func:`start_checked`). A check that fails names the
features it may blame, most likely first (a compiled call that differs from the eager call: compile; a
graph replay that differs: compile first when compiled, as the issue's order drops compile first, then
graphs). The first suspect the user did not ask for explicitly (``auto``) is dropped, with one line naming
the path, the error and the option that selects the safe path; when every suspect was asked for
(``--compile on``, ``--cuda-graphs on``, ``--backend tensorrt``) the start stops with :class:`SelfCheckError`
(one line; the command exits non-zero).

Cost: one call of the trusted path and one of the fast path per check (the steady call with the keyframe
test, the call a stream makes most while keyframes are possible), after a seeded reference fusion and one first
call on the trusted path (so the piles hold what a stream's do); the known answers are one call per network at
its smallest shapes. The state is saved before and restored after each run (one copy of the loop's buffers,
held only during the check) and the noise generator is restored, so a checked stream produces exactly the
frames of an unchecked one. Checking every kind of call (the keyframe writes, every bank count) would cost one
pair of calls each; one representative call was chosen instead. A fast path that breaks the CUDA context
itself (an illegal address in a replay) cannot be fallen back from in the same process: its error propagates.

The check needs only a narrow view of the loop (:class:`CheckedLoop`); :class:`RuntimeBinding` gives it for
:class:`~personalive_trt.runtime.stream.StreamRuntime` and is the one place that knows the runtime's
internals (its call bodies, graphs and buffers).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from personalive_trt.engines.checks import Comparison, one_line, relative_error

#: The fast-path features, in the order they are dropped when a check blames both.
FEATURES = ("compile", "graphs")
#: The option that turns each feature off, i.e. selects the safe path (what a fallback or stop line names).
SAFE_OPTION = {"compile": "--compile off", "graphs": "--cuda-graphs off",
               "backend": "--backend torch (or rebuild the engines on this machine)"}
LABELS = {"compile": "torch.compile", "graphs": "CUDA graphs"}
#: Max relative error (to max |reference|) of a fast path against its trusted path. A graph replays the very
#: kernels the eager call ran, so it matches to rounding (tests/test_runtime.py: <= 1e-5 on a GPU); compiled
#: kernels reorder sums (1e-3 in fp32, as tests/test_compile.py; fp16 rounding is 2**-11 per operation).
TOLERANCE = {("graphs", torch.float32): 1e-5, ("graphs", torch.float16): 1e-3,
             ("compile", torch.float32): 1e-3, ("compile", torch.float16): 2e-2}
SEED = 1234


class SelfCheckError(RuntimeError):
    """A path the user asked for explicitly failed its self-check (one line; the command exits non-zero)."""


# ---- what the check needs from a loop ---------------------------------------------------------------------
class CheckedLoop(Protocol):
    """The narrow view of a streaming loop the self-check works on (one call = one ``key``).

    ``prepare`` puts seeded, realistic inputs in place (a reference and driving frames); ``save``/``restore``
    copy the whole state (including the noise generator) so that both runs of a check start from the same
    point; ``outputs`` are the buffers a call writes that the check compares; ``run_eager`` runs one call
    eagerly on the loop's own networks, ``run_captured`` replays its captured graph, ``run_uncompiled`` runs it
    eagerly on the uncompiled networks. ``finish`` leaves the loop as a fresh one (no reference fused, the
    generator as it was before ``prepare``)."""

    def check_key(self) -> Hashable: ...
    def prepare(self, seed: int) -> None: ...
    def save(self) -> object: ...
    def restore(self, saved: object) -> None: ...
    def outputs(self) -> Mapping[str, torch.Tensor]: ...
    def run_eager(self, key: Hashable) -> None: ...
    def run_captured(self, key: Hashable) -> None: ...
    def run_uncompiled(self, key: Hashable) -> None: ...
    def finish(self) -> None: ...


def compare_runs(loop: CheckedLoop, key: Hashable, fast: Callable[[Hashable], None],
                 trusted: Callable[[Hashable], None], *, what: str, against: str, suspects: tuple[str, ...],
                 tolerance: float) -> Comparison:
    """Run ``trusted`` then ``fast`` from the same saved state and compare what they wrote.

    An exception of ``fast`` is a failed check (its message is the error); one of ``trusted`` is not caught:
    the trusted path failing is not something a fallback can help with."""
    start = time.perf_counter()
    saved = loop.save()
    try:
        trusted(key)
        expected = {name: t.clone() for name, t in loop.outputs().items()}
        loop.restore(saved)
        try:
            fast(key)
        except Exception as exc:  # noqa: BLE001 -- the fast path's failure IS the result; reported in one line
            return Comparison(what, against, suspects, None, tolerance, one_line(exc),
                              time.perf_counter() - start)
        error = relative_error(loop.outputs(), expected)
    finally:
        loop.restore(saved)
    return Comparison(what, against, suspects, error, tolerance, None, time.perf_counter() - start)


@dataclass(frozen=True)
class FastPath:
    """Which fast-path features a loop runs with."""

    compile: bool = False
    graphs: bool = False

    def describe(self) -> str:
        parts = [LABELS[f] for f in FEATURES if getattr(self, f)]
        return " + ".join(parts) if parts else "eager"

    def without(self, feature: str) -> "FastPath":
        return dataclasses.replace(self, **{feature: False})


def step_checks(loop: CheckedLoop, path: FastPath, dtype: torch.dtype, seed: int = SEED) -> list[Comparison]:
    """The checks of ``path`` on ``loop`` (none for the eager path): compiled vs uncompiled eager call, then
    graph replay vs the same call eagerly. Stops at the first failure (the loop is reopened without the
    suspect anyway); ``loop.finish()`` runs whatever happens."""
    checks = []
    if not (path.compile or path.graphs):
        return checks
    loop.prepare(seed)
    try:
        key = loop.check_key()
        if path.compile:
            checks.append(compare_runs(loop, key, loop.run_eager, loop.run_uncompiled, what="torch.compile",
                                       against="the same call through the uncompiled networks",
                                       suspects=("compile",), tolerance=TOLERANCE["compile", dtype]))
        if path.graphs and all(c.ok for c in checks):
            checks.append(compare_runs(loop, key, loop.run_captured, loop.run_eager, what="CUDA graphs",
                                       against="the same call run eagerly",
                                       suspects=("compile", "graphs") if path.compile else ("graphs",),
                                       tolerance=TOLERANCE["graphs", dtype]))
    finally:
        loop.finish()
    return checks


# ---- fallback ---------------------------------------------------------------------------------------------
L = TypeVar("L")


def fallback_line(failed: Comparison, dropped: str, now: FastPath) -> str:
    return f"self-check: {failed.describe()}; running {now.describe()} instead ({SAFE_OPTION[dropped]} selects it)"


def stop_line(failed: Comparison, explicit: Mapping[str, str]) -> str:
    """One line: what failed, which explicit option made it a stop, and what selects the safe path."""
    asked = [s for s in failed.suspects if s in explicit]
    options = " and ".join(explicit[s] for s in asked) or "the options given"
    safe = " or ".join(SAFE_OPTION[s] for s in asked) or "other options"
    return f"self-check failed: {failed.describe()}; not starting, since {options} was asked for (run with {safe})"


def next_path(failed: Comparison, path: FastPath, explicit: Mapping[str, str]) -> tuple[FastPath, str] | None:
    """The path without the first suspect of ``failed`` that ``path`` uses and the user did not ask for
    explicitly, and that suspect; None when there is none (stop)."""
    for suspect in failed.suspects:
        if suspect in FEATURES and getattr(path, suspect) and suspect not in explicit:
            return path.without(suspect), suspect
    return None


def start_checked(open_loop: Callable[[FastPath], L], path: FastPath, check: Callable[[L, FastPath], list[Comparison]],
                  explicit: Mapping[str, str] | None = None, say: Callable[[str], None] = print
                  ) -> tuple[L, FastPath]:
    """Open the loop on ``path``, check it, and walk the fallback order until a path passes.

    Args:
        open_loop: builds the loop for a path (reusing loaded networks; the previous loop is dropped first).
        path: the path the options chose (``auto`` resolved: e.g. graphs on CUDA, compile with a warm cache).
        check: the path's checks on an open loop (e.g. :func:`step_checks` through a :class:`RuntimeBinding`).
        explicit: the features the user asked for explicitly, each with the option as given (``{"compile":
            "--compile on", "backend": "--backend tensorrt"}``): a failure only they are suspected of stops the
            start with :class:`SelfCheckError` instead of falling back. ``"backend"`` (ONNX Runtime or TensorRT
            chosen) is always explicit: there is no default engine to fall back to.
        say: where the fallback lines go (stderr in the commands).
    Returns the loop that passed and its path.
    """
    explicit = dict(explicit or {})
    while True:
        try:
            loop = open_loop(path)
        except Exception as exc:  # noqa: BLE001 -- a fast path that cannot even open is a failed check
            if not (path.compile or path.graphs):
                raise  # the eager path: nothing to fall back to
            checks = [Comparison(f"opening {path.describe()}", "the eager path", _open_suspects(path), None, 0.0,
                                 one_line(exc))]
        else:
            checks = check(loop, path)
        failed = next((c for c in checks if not c.ok), None)
        if failed is None:
            return loop, path
        step = next_path(failed, path, explicit)
        if step is None:
            raise SelfCheckError(stop_line(failed, explicit))
        loop = None  # its buffers and graphs go before the next path allocates its own
        path, dropped = step
        say(fallback_line(failed, dropped, path))


def _open_suspects(path: FastPath) -> tuple[str, ...]:
    """A path that raised while opening: compile first (compiling happens then), then graphs (capture)."""
    return tuple(f for f in FEATURES if getattr(path, f))


# ---- StreamRuntime ----------------------------------------------------------------------------------------
def seeded_frames(count: int, size: int, seed: int) -> np.ndarray:
    """(count, size, size, 3) uint8 smooth random images: photo-like colour fields (white noise would drive
    the networks far outside their range), different per frame, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 4, 4, generator=generator)
    field = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = torch.sigmoid(1.5 * field).permute(0, 2, 3, 1)
    return (images * 255).round().to(torch.uint8).numpy()


class RuntimeBinding:
    """:class:`CheckedLoop` for a :class:`~personalive_trt.runtime.stream.StreamRuntime`.

    The only code that reaches into the runtime: its call bodies (``_body``), its captured graphs, its stream
    and its buffers. ``eager_networks`` (the networks a compiled runtime was compiled from) runs the
    uncompiled call; without it ``run_uncompiled`` raises.
    """

    def __init__(self, runtime, eager_networks=None) -> None:
        self.runtime = runtime
        self.eager = None
        if eager_networks is not None:
            # the same view of them the runtime takes of its own networks (StreamRuntime.__init__)
            self.eager = eager_networks.view(clone_outputs=False, stable_inputs={
                "denoising_unet": eager_networks.backends["denoising_unet"].spec.input_names})
        self._generator = None

    def check_key(self) -> tuple:
        """The steady call with the keyframe test (every network of a call, plus the test), when the loop
        has keyframes; else the plain steady call."""
        return ("steady", 0, self.runtime.config.max_keyframes > 0)

    @torch.no_grad()
    def prepare(self, seed: int) -> None:
        """A seeded reference fused and one first call made, on the trusted (uncompiled, eager) networks: the
        fast path runs only inside the comparisons, where its failure is the check's result."""
        rt, cfg = self.runtime, self.runtime.config
        self._generator = rt.generator.get_state()
        rt.reset()
        frames = seeded_frames(cfg.window + 1, cfg.resolution, seed)
        with self._trusted_networks():
            rt.fuse_reference(frames[0])
            with rt._on_stream():
                rt.frames_in.copy_(torch.from_numpy(frames[1:]))
                rt._body(("first",))  # the piles as a stream has them after its first call
        self._sync()

    def save(self) -> dict:
        # A start-up copy of every buffer (device to device), freed when the check ends.
        with torch.no_grad(), self.runtime._on_stream():
            buffers = {name: t.clone() for name, t in self.runtime.state_buffers().items()}
        return {"buffers": buffers, "generator": self.runtime.generator.get_state()}

    def restore(self, saved: dict) -> None:
        rt = self.runtime
        with torch.no_grad(), rt._on_stream():
            for name, t in rt.state_buffers().items():
                t.copy_(saved["buffers"][name])
        rt.generator.set_state(saved["generator"])
        self._sync()

    def outputs(self) -> dict[str, torch.Tensor]:
        self._sync()  # the check reads the results on the host; start-up only
        rt = self.runtime
        return {"video": rt.video, "latent_pile": rt.latent_pile, "flags": rt.flags}

    def run_eager(self, key) -> None:
        with torch.no_grad(), self.runtime._on_stream():
            self.runtime._body(key)
        self._sync()

    def run_captured(self, key) -> None:
        graph = self.runtime.graphs.get(key)
        if graph is None:
            raise RuntimeError(f"no CUDA graph was captured for the call {key}")
        with self.runtime._on_stream():
            graph.replay()
        self._sync()

    def run_uncompiled(self, key) -> None:
        if self.eager is None:
            raise RuntimeError("RuntimeBinding: no uncompiled networks were given for the compile check")
        with self._trusted_networks():
            self.run_eager(key)

    @contextlib.contextmanager
    def _trusted_networks(self) -> Iterator[None]:
        """The runtime on the uncompiled networks for the duration (its own when none were given)."""
        rt = self.runtime
        own, rt.nets = rt.nets, self.eager or rt.nets
        try:
            yield
        finally:
            rt.nets = own

    def finish(self) -> None:
        self.runtime.reset()
        if self._generator is not None:
            self.runtime.generator.set_state(self._generator)

    def _sync(self) -> None:
        if self.runtime.stream is not None:
            self.runtime.stream.synchronize()


@dataclass
class CheckedStart:
    """What :func:`open_checked` opened: the runtime, the path it runs, and every check made (with its time)."""

    runtime: object
    path: FastPath
    checks: list[Comparison]
    seconds: float


def open_checked(networks, config, *, backend: str = "torch", compile: Callable | None = None,  # noqa: A002
                 graphs: bool | None = None, explicit: Mapping[str, str] | None = None, engines_dir=None,
                 known_answers: Mapping | None = None, check: bool = True, say: Callable[[str], None] = print,
                 **runtime_options) -> CheckedStart:
    """A :class:`~personalive_trt.runtime.stream.StreamRuntime` over ``networks`` whose fast path passed the
    self-check (see the module docstring); what `run` and `serve` open the loop with.

    Args:
        networks (`Networks`): the eager (uncompiled) networks of ``backend``.
        backend (`str`): ``torch``, ``onnxruntime`` or ``tensorrt`` (the engines are checked on their known
            answers first; a failure stops: an engine backend is always an explicit choice).
        compile (`callable`, *optional*): networks -> compiled networks (e.g. ``lambda n: compile_networks(n,
            options)``); None: not compiled.
        graphs (`bool`, *optional*): CUDA graphs; None: on CUDA with the torch or TensorRT backend.
        explicit (`Mapping[str, str]`, *optional*): the features asked for explicitly, with the option as given
            (``{"compile": "--compile on", "graphs": "--cuda-graphs on"}``): their failure stops the start.
        engines_dir, known_answers: the engines folder and its known answers' record
            (:func:`~personalive_trt.engines.known_answers.read_record`; None: a folder built before).
        check (`bool`, defaults to True): False (``--no-self-check``) opens the path as asked, unchecked.
        say: where the fallback and "rebuild" lines go.
        runtime_options: passed on to ``StreamRuntime`` (``noise``, ``seed``, ``ring``).
    """
    from personalive_trt.devices import canonical_device
    from personalive_trt.engines.known_answers import NO_ANSWERS_LINE, check_known_answers
    from personalive_trt.runtime.stream import StreamRuntime

    start = time.perf_counter()
    explicit = dict(explicit or {})
    checks: list[Comparison] = []
    if backend != "torch":
        explicit.setdefault("backend", f"--backend {backend}")
        if check:
            answers = check_known_answers(networks, engines_dir, known_answers, what=backend)
            if answers is None:
                say(NO_ANSWERS_LINE.format(folder=engines_dir))
            else:
                checks += answers
                failed = next((c for c in answers if not c.ok), None)
                if failed is not None:
                    raise SelfCheckError(stop_line(failed, explicit))
    if graphs is None:
        graphs = canonical_device(networks.device).type == "cuda" and backend in ("torch", "tensorrt")
    compiled = []  # compiled once, reused when only the graphs are dropped

    def open_loop(path: FastPath):
        nets = networks
        if path.compile:
            if not compiled:
                compiled.append(compile(networks))
            nets = compiled[0]
        return StreamRuntime(nets, config, graphs=path.graphs, **runtime_options)

    def check_path(loop, path: FastPath) -> list[Comparison]:
        made = step_checks(RuntimeBinding(loop, networks if path.compile else None), path, networks.dtype)
        checks.extend(made)
        return made

    path = FastPath(compile=compile is not None, graphs=graphs)
    if not check:
        return CheckedStart(open_loop(path), path, checks, time.perf_counter() - start)
    runtime, path = start_checked(open_loop, path, check_path, explicit, say)
    return CheckedStart(runtime, path, checks, time.perf_counter() - start)


__all__ = ["CheckedLoop", "CheckedStart", "FastPath", "RuntimeBinding", "SelfCheckError", "compare_runs",
           "fallback_line", "next_path", "open_checked", "start_checked", "step_checks", "stop_line"]
