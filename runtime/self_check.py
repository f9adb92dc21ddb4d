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

Cost: one extra call (the steady call with the keyframe test, the call a stream makes most while keyframes are
possible), because the check rides on the warm-up a fast path makes at construction anyway (:class:`WarmUpCheck`):
a compiled runtime runs every kind of call once through the compiled networks to compile it, a captured runtime
runs every kind of call once eagerly before capturing it. Those warm-up calls run on the check's seeded inputs (a
seeded portrait fused in place of the compile warm-up's blank one, seeded driving frames, the state saved after the
first call and restored before the check key), so the compiled warm-up call is the compile check's fast run (the
extra run: the same call through the uncompiled networks) and the eager warm-up call is the graph check's trusted
run (the extra run: the graph's replay). With graphs only, a captured runtime encodes no reference at
construction, so the check fuses seeded values as its reference instead of encoding a portrait (which would cost
about half a steady step more): a replay and its eager call agree on any inputs, and random ones reveal a wrong
binding as well as a portrait's. Compile and graphs together: the compiled warm-up call is the fast
run of both checks, and the eager warm-up call before the check key's capture runs through the uncompiled networks
instead of the compiled ones (the compiled code's lazy initialisation, which must not land in a graph, was done by
its compiled warm-up call on the same stream), so it is the compile check's trusted run and the replay is the one
extra run. The eager path (a CPU's default) warms nothing up and checks nothing: no cost. The known answers are one
call per network at its smallest shapes. The state is saved after the first warm-up call and restored before each
compared run (one copy of the loop's buffers, held only during the warm-up) and the noise generator is restored, so
a checked stream produces exactly the frames of an unchecked one. Checking every kind of call (the keyframe writes,
every bank count) would cost one extra call each; one representative call was chosen instead. A fast path that
breaks the CUDA context itself (an illegal address in a replay) cannot be fallen back from in the same process: its
error propagates.

The check needs only a narrow view of the loop (:class:`CheckedLoop`); :class:`RuntimeBinding` gives it for
:class:`~personalive_trt.runtime.stream.StreamRuntime` and its offline variant and is the one place here that knows
the runtime's internals (its call bodies, graphs and buffers).
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

    ``stage_inputs`` puts seeded inputs in place (driving frames staged, and a reference fused: a portrait
    encoded, or seeded values);
    ``save``/``restore`` copy the whole state (including the noise generator) so that both runs of a check start
    from the same point; ``outputs`` copies the buffers a call writes that the check compares; ``run_captured``
    replays a call's captured graph, ``run_uncompiled`` runs it eagerly on the uncompiled networks, and inside
    ``uncompiled()`` the loop's own calls do. The runs the check does not make itself are the loop's own warm-up
    calls (see :class:`WarmUpCheck`)."""

    def check_key(self) -> Hashable: ...
    def stage_inputs(self, seed: int, encode: bool) -> None: ...
    def save(self) -> object: ...
    def restore(self, saved: object) -> None: ...
    def outputs(self) -> dict[str, torch.Tensor]: ...
    def run_captured(self, key: Hashable) -> None: ...
    def run_uncompiled(self, key: Hashable) -> None: ...
    def uncompiled(self) -> contextlib.AbstractContextManager: ...


class CheckFailed(Exception):
    """A check made during a loop's construction (its warm-up) failed: the construction stops there (its remaining
    warm-up, minutes of compilation on a CPU, would be wasted) and :func:`start_checked` walks the fallback."""

    def __init__(self, checks: list[Comparison]) -> None:
        super().__init__(checks[-1].describe())
        self.checks = checks


class SameOnEveryPath(Exception):
    """Raised by a loop opener for an error that no fallback avoids (the loop refused before its warm-up, where
    the paths begin to differ): :func:`start_checked` raises ``error`` itself instead of falling back."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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
        check: the path's checks on an open loop (a runtime checks itself while it opens, through
            :class:`WarmUpCheck`: then this returns the checks its open made, and a failing one raised
            :class:`CheckFailed` out of ``open_loop``). Any other error of ``open_loop`` fails the path's check,
            unless wrapped in :class:`SameOnEveryPath`: that one is raised as it is.
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
        except SameOnEveryPath as same:  # e.g. the offline runtime's bank slots that do not fit: its one line
            raise same.error from None
        except CheckFailed as failed:  # checked while opening (on its warm-up calls), and failed
            checks = failed.checks
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
    """:class:`CheckedLoop` for a :class:`~personalive_trt.runtime.stream.StreamRuntime` (or its offline variant).

    The only code here that reaches into the runtime: its call bodies, its captured graphs, its stream and its
    buffers. ``eager_networks`` (the networks a compiled runtime was compiled from) runs the uncompiled call;
    without it ``run_uncompiled`` raises.
    """

    def __init__(self, runtime, eager_networks=None) -> None:
        self.runtime = runtime
        self.eager = None
        if eager_networks is not None:
            # the same view of them the runtime takes of its own networks (StreamRuntime.__init__)
            self.eager = eager_networks.view(clone_outputs=False, stable_inputs={
                "denoising_unet": eager_networks.backends["denoising_unet"].spec.input_names})

    def check_key(self) -> tuple:
        return self.runtime.check_key()

    @torch.no_grad()
    def stage_inputs(self, seed: int, encode: bool) -> None:
        """Seeded driving frames staged and a reference fused: a seeded portrait encoded through the runtime's own
        networks (``encode``: the reference encoding a compiled runtime warms up anyway), else seeded values in
        the reference buffers (a check of graph replays alone, which agree with their eager calls on any
        inputs)."""
        cfg = self.runtime.config
        self.runtime._stage_check_inputs(seeded_frames(cfg.window + 1, cfg.resolution, seed),
                                         reference_seed=None if encode else seed)
        self._sync()

    def save(self) -> dict:
        # A start-up copy of every buffer (device to device), freed when the warm-up ends.
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
        rt = self.runtime
        with torch.no_grad(), rt._on_stream():
            copies = {"video": rt.video.clone(), "latent_pile": rt.latent_pile.clone(), "flags": rt.flags.clone()}
        self._sync()  # the check reads the results on the host; start-up only
        return copies

    def run_captured(self, key) -> None:
        graph = self.runtime.graphs.get(key)
        if graph is None:
            raise RuntimeError(f"no CUDA graph was captured for the call {key}")
        with self.runtime._on_stream():
            graph.replay()
        self._sync()

    @contextlib.contextmanager
    def uncompiled(self) -> Iterator[None]:
        """The runtime's calls made inside run through the uncompiled networks."""
        if self.eager is None:
            raise RuntimeError("RuntimeBinding: no uncompiled networks were given for the compile check")
        rt = self.runtime
        own, rt.nets = rt.nets, self.eager
        try:
            yield
        finally:
            rt.nets = own

    def run_uncompiled(self, key) -> None:
        rt = self.runtime
        with self.uncompiled(), torch.no_grad(), rt._on_stream():
            rt._body(key)
        self._sync()

    def _sync(self) -> None:
        self.runtime._sync()


class WarmUpCheck:
    """The self-check, made on the warm-up calls a compiled or captured runtime makes at construction anyway
    (:class:`~personalive_trt.runtime.stream.WarmUpHooks`), so that only one run per check is extra.

    * Before the warm-up: seeded driving frames staged and a reference fused (in place of the warm-up's blank
      inputs): a seeded portrait encoded when compiled (its encoding is the reference encoder's compile warm-up),
      else seeded values in the reference buffers (a captured runtime encodes nothing at construction, and a
      replay agrees with its eager call on any inputs). After the warm-up's first call, the state is saved (the
      piles as a stream has them after its first call). Every compared run starts from that state and its noise.
    * **torch.compile**: the compiled warm-up call of the check key IS the fast run; the extra run is the same call
      through the uncompiled networks. A compiled warm-up call that raises fails the check (the compiled path
      cannot run).
    * **CUDA graphs**: the eager warm-up call before the check key's capture IS the trusted run; the extra run is
      the captured graph's replay.
    * **Both**: the compiled warm-up call of the check key is the fast run of both checks, and the eager warm-up
      call before its capture runs through the uncompiled networks: it is the compile check's trusted run. The
      only extra run is the replay.

    A failing check raises :class:`CheckFailed` out of the construction. ``checks`` holds every check made.
    """

    def __init__(self, path: FastPath, dtype: torch.dtype, eager_networks=None, seed: int = SEED,
                 binding: Callable[..., CheckedLoop] = RuntimeBinding) -> None:
        self.path, self.dtype, self.seed = path, dtype, seed
        self.eager_networks, self.binding = eager_networks, binding
        self.checks: list[Comparison] = []
        self.started = False  # the loop's warm-up began (before it, every path opens alike)
        self._loop: CheckedLoop | None = None
        self._saved = None  # the state after the first call
        self._compiled = None  # compile + graphs: the compiled warm-up call's outputs, awaiting the uncompiled call
        self._expected = None  # the graph check's trusted outputs

    def start(self, runtime) -> None:
        self.started = True
        self._loop = self.binding(runtime, self.eager_networks)
        with self._compiled_calls(self.path.compile):  # compiled: the reference encoding's warm-up
            self._loop.stage_inputs(self.seed, encode=self.path.compile)

    @contextlib.contextmanager
    def call(self, runtime, key, stage: str) -> Iterator[None]:
        loop = self._loop
        checked = key == loop.check_key()
        if checked and self._saved is not None:
            loop.restore(self._saved)
        # compile + graphs: the eager call before the check key's capture runs the uncompiled networks; it is the
        # compile check's trusted run (the compiled code's lazy initialisation was done by its compiled warm-up call)
        trusted = checked and stage == "capture" and self._compiled is not None
        started = time.perf_counter()
        with self._compiled_calls(stage == "compile"), (loop.uncompiled() if trusted else contextlib.nullcontext()):
            yield
        if self._saved is None and key[0] == "first":
            self._saved = loop.save()
        if not checked:
            return
        if stage == "capture":
            if trusted:
                self._compile_check(started, error=relative_error(self._compiled, loop.outputs()))
            self._expected = self._compiled if trusted else loop.outputs()  # what the replay must give
            return
        fast = loop.outputs()
        if self.path.graphs:  # checked against the uncompiled call that precedes this key's capture
            self._compiled = fast
            return
        loop.restore(self._saved)
        loop.run_uncompiled(key)  # the one extra run of the compile check
        self._compile_check(started, error=relative_error(fast, loop.outputs()))

    def captured(self, runtime, key) -> None:
        loop = self._loop
        if key != loop.check_key():
            return
        started = time.perf_counter()
        loop.restore(self._saved)
        try:
            loop.run_captured(key)  # the one extra run of the graph check
        except Exception as exc:  # noqa: BLE001 -- the fast path's failure IS the result; reported in one line
            self._graph_check(started, failure=one_line(exc))
            return
        self._graph_check(started, error=relative_error(loop.outputs(), self._expected))

    def finish(self, runtime) -> None:
        self._loop = self._saved = self._compiled = self._expected = None  # the copies go with the warm-up

    def missing(self, passed: list[Comparison] = ()) -> list[str]:
        """The checks of ``path`` that were not made (a loop whose warm-up did not run them) and had not passed
        before (``passed``: compiled networks reused after only the graphs were dropped were warmed up and checked
        by the first open, and are not warmed up again)."""
        made = {c.what for c in [*self.checks, *passed] if c.ok}
        wanted = [("compile", "torch.compile"), ("graphs", "CUDA graphs")]
        return [what for feature, what in wanted if getattr(self.path, feature) and what not in made]

    @contextlib.contextmanager
    def _compiled_calls(self, compiled: bool) -> Iterator[None]:
        """A compiled call that raises is a failed compile check (the compiled path cannot run), not an error."""
        if not compiled:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:  # noqa: BLE001 -- reported in one line, then the fallback
            self._compile_check(started, failure=one_line(exc))

    def _compile_check(self, started: float, error: float | None = None, failure: str | None = None) -> None:
        """The compile check's result: the relative ``error`` of the compiled call, or the ``failure`` of one."""
        self._add(Comparison("torch.compile", "the same call through the uncompiled networks", ("compile",), error,
                             TOLERANCE["compile", self.dtype], failure, time.perf_counter() - started))

    def _graph_check(self, started: float, error: float | None = None, failure: str | None = None) -> None:
        """The graph check's result: the relative ``error`` of the replay, or the ``failure`` of it."""
        suspects = ("compile", "graphs") if self.path.compile else ("graphs",)
        self._add(Comparison("CUDA graphs", "the same call run eagerly", suspects, error,
                             TOLERANCE["graphs", self.dtype], failure, time.perf_counter() - started))

    def _add(self, comparison: Comparison) -> None:
        self.checks.append(comparison)
        if not comparison.ok:
            raise CheckFailed(self.checks)


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
                 runtime: Callable[..., object] | None = None, **runtime_options) -> CheckedStart:
    """A :class:`~personalive_trt.runtime.stream.StreamRuntime` over ``networks`` whose fast path passed the
    self-check (see the module docstring); what `run` and `serve` open the loop with.

    Args:
        networks (`Networks`): the eager (uncompiled) networks of ``backend``.
        backend (`str`): ``torch``, ``onnxruntime`` or ``tensorrt`` (the engines are checked on their known
            answers first; a failure stops: an engine backend is always an explicit choice).
        compile (`callable`, *optional*): networks -> compiled networks (e.g. ``lambda n: compile_networks(n,
            options)``: networks with a compiled state, which the runtime warms up and the check rides on);
            None: not compiled.
        graphs (`bool`, *optional*): CUDA graphs; None: on CUDA with the torch or TensorRT backend.
        explicit (`Mapping[str, str]`, *optional*): the features asked for explicitly, with the option as given
            (``{"compile": "--compile on", "graphs": "--cuda-graphs on"}``): their failure stops the start.
        engines_dir, known_answers: the engines folder and its known answers' record
            (:func:`~personalive_trt.engines.known_answers.read_record`; None: a folder built before).
        check (`bool`, defaults to True): False (``--no-self-check``) opens the path as asked, unchecked.
        say: where the fallback and "rebuild" lines go.
        runtime (`callable`, *optional*): the runtime class or factory, called as ``runtime(networks,
            config=..., graphs=..., hooks=..., **runtime_options)``; default ``StreamRuntime`` (the offline mode
            passes ``OfflineStreamRuntime`` with its clip's frame count).
        runtime_options: passed on to the runtime (``noise``, ``seed``, ``ring``, ...).
    """
    from personalive_trt.devices import canonical_device
    from personalive_trt.engines.known_answers import NO_ANSWERS_LINE, check_known_answers
    from personalive_trt.runtime.stream import StreamRuntime

    start = time.perf_counter()
    runtime = runtime or StreamRuntime
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
    made: dict[int, list[Comparison]] = {}  # id(loop) -> the checks its open made

    def open_loop(path: FastPath):
        nets = networks
        if path.compile:
            if not compiled:
                compiled.append(compile(networks))
            nets = compiled[0]
        if not check:
            return runtime(nets, config=config, graphs=path.graphs, **runtime_options)
        hooks = WarmUpCheck(path, networks.dtype, networks if path.compile else None)
        try:
            loop = runtime(nets, config=config, graphs=path.graphs, hooks=hooks, **runtime_options)
        except Exception as exc:  # a failed check (CheckFailed) comes from the warm-up, so it is raised as it is
            if not hooks.started:  # the runtime refused before its warm-up: no fast path made a difference yet
                raise SameOnEveryPath(exc) from exc
            raise
        finally:
            checks.extend(hooks.checks)
        missing = hooks.missing(checks)
        if missing:  # never start a fast path unchecked because its warm-up did not run (e.g. uncompiled networks)
            raise RuntimeError(f"self-check: {' and '.join(missing)} not checked: the runtime's warm-up did not run "
                               "it (compile must return networks from compile_networks)")
        made[id(loop)] = hooks.checks
        return loop

    path = FastPath(compile=compile is not None, graphs=graphs)
    if not check:
        return CheckedStart(open_loop(path), path, checks, time.perf_counter() - start)
    opened, path = start_checked(open_loop, path, lambda loop, p: made.pop(id(loop), []), explicit, say)
    return CheckedStart(opened, path, checks, time.perf_counter() - start)


__all__ = ["CheckFailed", "CheckedLoop", "CheckedStart", "FastPath", "RuntimeBinding", "SameOnEveryPath",
           "SelfCheckError", "WarmUpCheck", "fallback_line", "next_path", "open_checked", "start_checked", "stop_line"]
