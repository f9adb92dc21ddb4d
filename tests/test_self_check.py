"""The start-up self-check (runtime/self_check.py) and the engines' known answers (engines/known_answers.py).

Fault injection on the CPU, each taking its documented branch with its message asserted:

* a corrupted CUDA-graph replay (a stand-in "graph" that replays the call and then scrambles the frames, "captured"
  by a real CPU runtime's warm-up, which the check rides on: CUDA graphs need a GPU): ``auto`` falls back to eager
  in one line, ``--cuda-graphs on`` stops with :class:`SelfCheckError`;
* a compiled module that raises (in the compiled networks' warm-up): ``auto`` falls back to eager, ``--compile on``
  stops;
* a TensorRT stand-in (tests/tensorrt_stub) that returns wrong numbers: the known-answer check stops the start
  (an engine backend is always an explicit choice); a folder without known answers gets the "rebuild" line.

The fallback order itself (compile + graphs -> graphs -> eager, explicit features kept) is checked on a loop
stand-in without networks. Real runs use tiny synthetic weights at 64², window 1 (the cheapest stream).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from personalive_trt.config import StreamConfig
from personalive_trt.engines.checks import Comparison
from personalive_trt.engines.networks import Networks
from personalive_trt.runtime import StreamRuntime
from personalive_trt.runtime.self_check import FastPath, SelfCheckError, open_checked, seeded_frames, start_checked
from personalive_trt.runtime.testing import StandInCapture, StandInCompiledState, counted_work, stand_in_compile

CONFIG = StreamConfig(resolution=64, window=1, keyframe_start=0, keyframe_threshold=0.0)


@pytest.fixture(scope="module")
def networks(parity_models):
    return Networks.from_models(parity_models, CONFIG)


class CheckedKindsOnly:
    """Mixed in before :class:`StandInCapture`: captures only the calls the check and these tests make (every
    captured kind costs one eager warm-up call on a CPU)."""

    def graph_keys(self) -> list[tuple]:
        return [("first",), self.check_key()]


class StandInGraphs(CheckedKindsOnly, StandInCapture, StreamRuntime):
    pass


class CorruptGraphs(StandInGraphs):
    corrupt = True


def test_corrupted_graph_replay_falls_back_when_auto_and_stops_when_asked_for(networks):
    lines: list[str] = []
    start = open_checked(networks, CONFIG, graphs=True, runtime=CorruptGraphs, say=lines.append, seed=3)
    checks = start.checks
    assert [c.what for c in checks] == ["CUDA graphs"] and not checks[0].ok and checks[0].error > 1e-2
    assert start.path == FastPath() and not start.runtime.graphs and not start.runtime.use_graphs
    assert not start.runtime.reference_fused and start.runtime.count == 0  # left as a fresh runtime
    assert len(lines) == 1 and lines[0].startswith("self-check: CUDA graphs: max relative error "), lines
    assert lines[0].endswith("> 1e-05 against the same call run eagerly; running eager instead (--cuda-graphs off "
                             "selects it)"), lines

    with pytest.raises(SelfCheckError) as caught:
        start_checked(lambda p: start.runtime, FastPath(graphs=True), lambda rt, p: checks,
                      explicit={"graphs": "--cuda-graphs on"})
    message = str(caught.value)
    assert "\n" not in message and message.startswith("self-check failed: CUDA graphs: max relative error ")
    assert message.endswith("not starting, since --cuda-graphs on was asked for (run with --cuda-graphs off)")


class FailingCapture(StandInGraphs):
    def _capture(self, key, pool):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


def refusing(networks, **options):
    raise ValueError("the runtime refuses these networks")


def test_an_open_that_raises_falls_back_only_when_its_fast_path_began(networks):
    """A capture that raises fails the graphs (auto: one line, then eager); an error raised before the warm-up,
    where the paths begin to differ, is raised as it is, with no fallback line (eager would meet it again)."""
    lines: list[str] = []
    start = open_checked(networks, CONFIG, graphs=True, runtime=FailingCapture, say=lines.append, seed=3)
    assert start.path == FastPath() and not start.runtime.use_graphs
    assert lines == ["self-check: opening CUDA graphs raised RuntimeError: CUDA error: operation not permitted when "
                     "stream is capturing; running eager instead (--cuda-graphs off selects it)"]
    lines.clear()
    with pytest.raises(ValueError, match="^the runtime refuses these networks$"):
        open_checked(networks, CONFIG, graphs=True, runtime=refusing, say=lines.append)
    assert lines == []


def assert_streams_as_unchecked(runtime, networks) -> None:
    """``runtime``'s first call equals, bit for bit, an unchecked eager runtime's (same seed, same portrait)."""
    frames = seeded_frames(3, CONFIG.resolution, seed=5)
    unchecked = StreamRuntime(networks, CONFIG, seed=3)
    for loop in (runtime, unchecked):
        loop.fuse_reference(frames[0])
    np.testing.assert_array_equal(runtime.step(frames[1:2]), unchecked.step(frames[1:2]))


def test_a_passing_check_leaves_the_stream_exactly_as_unchecked(networks):
    """The check rides on the warm-up (seeded inputs, the eager warm-up call against the replay; seeded values as
    the reference: no portrait is encoded), then restores the noise generator and resets the runtime: its stream
    equals an unchecked runtime's, bit for bit."""
    lines: list[str] = []
    with counted_work() as work:
        start = open_checked(networks, CONFIG, graphs=True, runtime=StandInGraphs, say=lines.append, seed=3)
    assert work.portraits == []
    runtime = start.runtime
    assert start.path == FastPath(graphs=True) and lines == [] and runtime.use_graphs and runtime.graphs
    assert [c.what for c in start.checks] == ["CUDA graphs"] and start.checks[0].error == 0.0  # same kernels on a CPU
    assert not runtime.reference_fused and runtime.count == 0
    assert_streams_as_unchecked(runtime, networks)


class RaisingBackend:
    """A compiled network that raises when called (what a miscompiled kernel or a broken inductor does)."""

    def __init__(self, backend) -> None:
        self.backend, self.spec, self.device = backend, backend.spec, backend.device
        self.input_dtypes, self.output_dtypes = backend.input_dtypes, backend.output_dtypes

    def allocate(self) -> None:
        pass  # the wrapped backend's networks allocated it

    def infer(self, inputs, *, stable=()):
        raise RuntimeError("inductor: illegal instruction in the compiled kernel\n(and a long traceback)")


class WrongBackend(RaisingBackend):
    """A compiled network that runs and returns wrong numbers (a miscompiled kernel that raises nothing)."""

    def infer(self, inputs, *, stable=()):
        outputs = self.backend.infer(inputs, stable=stable)
        return {name: value * 1.5 for name, value in outputs.items()}


def compile_to(backend_class):
    """A compile step (networks -> compiled networks) whose denoising UNet is ``backend_class`` over the eager one."""
    def compile_networks(networks):
        unet = backend_class(networks.backends["denoising_unet"])
        compiled = Networks(dict(networks.backends, denoising_unet=unet), networks.shapes, networks.dtype,
                            networks.device, description=f"compiled ({backend_class.__name__})")
        compiled.compiled = StandInCompiledState()
        return compiled
    return compile_networks


raising_compile, wrong_compile = compile_to(RaisingBackend), compile_to(WrongBackend)


def test_compiled_module_that_raises_falls_back_when_auto_and_stops_when_asked(networks):
    lines: list[str] = []
    start = open_checked(networks, CONFIG, compile=raising_compile, say=lines.append, seed=3)
    assert start.path == FastPath() and start.runtime.nets.backends["denoising_unet"] is \
        networks.backends["denoising_unet"]
    assert lines == ["self-check: torch.compile raised RuntimeError: inductor: illegal instruction in the compiled "
                     "kernel; running eager instead (--compile off selects it)"]
    assert [c.ok for c in start.checks] == [False]
    with pytest.raises(SelfCheckError, match=r"^self-check failed: torch.compile raised RuntimeError: inductor: "
                       r"illegal instruction in the compiled kernel; not starting, since --compile on was asked for "
                       r"\(run with --compile off\)$"):
        # the same check failing with --compile on (it is made the same way; the branch differs)
        start_checked(lambda p: start.runtime, FastPath(compile=True), lambda rt, p: start.checks,
                      explicit={"compile": "--compile on"})


# ---- compile and graphs together ------------------------------------------------------------------------------
def test_compile_and_graphs_together_cost_one_extra_call_and_stream_as_unchecked(networks):
    """With both fast paths the compiled warm-up call is the fast run of both checks and the eager call before the
    check key's capture runs the uncompiled networks (the compile check's trusted run): the replay is the only call
    an unchecked open does not make (the seeded portrait is encoded in place of the compile warm-up's blank one)."""
    lines: list[str] = []
    with counted_work() as checked:
        start = open_checked(networks, CONFIG, compile=stand_in_compile, graphs=True, runtime=StandInGraphs,
                             say=lines.append, seed=3)
    assert len(checked.portraits) == 1 and checked.portraits[0].any()
    runtime = start.runtime
    assert lines == [] and start.path == FastPath(compile=True, graphs=True)
    assert [(c.what, c.against, c.ok) for c in start.checks] == [
        ("torch.compile", "the same call through the uncompiled networks", True),
        ("CUDA graphs", "the same call run eagerly", True)]
    assert [c.error for c in start.checks] == [0.0, 0.0]  # the stand-in compiles nothing: the same kernels
    with counted_work() as unchecked:
        StandInGraphs(stand_in_compile(networks), CONFIG, graphs=True, seed=3)
    assert len(unchecked.portraits) == 1 and not unchecked.portraits[0].any()  # the compile warm-up's blank one
    assert len(checked.calls) == len(unchecked.calls) + 1, (checked.calls, unchecked.calls)
    uncompiled = [key for key, compiled in checked.calls if not compiled]
    assert uncompiled == [runtime.check_key()] and all(compiled for _, compiled in unchecked.calls)
    assert runtime.nets.compiled.frozen and not runtime.reference_fused and runtime.count == 0
    assert_streams_as_unchecked(runtime, networks)


def test_compile_and_graphs_drop_what_fails(networks):
    """Both on, ``auto``: a miscompiled call (checked against the uncompiled call before its capture) drops compile
    and keeps the graphs; a corrupted replay drops compile first (the compiled code may be what the graph got
    wrong), then the graphs."""
    lines: list[str] = []
    start = open_checked(networks, CONFIG, compile=wrong_compile, graphs=True, runtime=StandInGraphs,
                         say=lines.append, seed=3)
    assert start.path == FastPath(graphs=True) and start.runtime.use_graphs
    assert start.runtime.nets.backends["denoising_unet"] is networks.backends["denoising_unet"]
    assert [(c.what, c.ok) for c in start.checks] == [("torch.compile", False), ("CUDA graphs", True)]
    assert len(lines) == 1 and lines[0].startswith("self-check: torch.compile: max relative error "), lines
    assert lines[0].endswith("against the same call through the uncompiled networks; running CUDA graphs instead "
                             "(--compile off selects it)"), lines

    lines.clear()
    start = open_checked(networks, CONFIG, compile=stand_in_compile, graphs=True, runtime=CorruptGraphs,
                         say=lines.append, seed=3)
    assert start.path == FastPath() and not start.runtime.use_graphs
    assert [(c.what, c.ok) for c in start.checks] == [("torch.compile", True), ("CUDA graphs", False),
                                                      ("CUDA graphs", False)]
    assert [line.split("; ")[-1] for line in lines] == [
        "running CUDA graphs instead (--compile off selects it)",
        "running eager instead (--cuda-graphs off selects it)"], lines


# ---- the fallback order, on a loop stand-in ------------------------------------------------------------------
def failing(*suspects: str) -> list[Comparison]:
    return [Comparison("the fast path", "the slow one", suspects, 1.0, 1e-5)]


@pytest.mark.parametrize("explicit, blamed, expected", [
    ({}, ("compile",), [FastPath(True, True), FastPath(False, True)]),  # compile dropped first
    ({}, ("compile", "graphs"), [FastPath(True, True), FastPath(False, True), FastPath()]),
    ({"compile": "--compile on"}, ("compile", "graphs"), [FastPath(True, True), FastPath(True, False)]),
])
def test_fallback_order(explicit, blamed, expected):
    opened: list[FastPath] = []

    def check(loop, path):
        # each path fails its check while it still has a blamed feature the user did not insist on
        return failing(*blamed) if any(getattr(path, f) for f in blamed if f not in explicit) else []

    lines: list[str] = []
    loop, path = start_checked(lambda p: opened.append(p) or p, FastPath(True, True), check, explicit, lines.append)
    assert opened == expected and path == expected[-1] and len(lines) == len(expected) - 1


def test_both_features_asked_for_stops_and_an_eager_failure_propagates():
    with pytest.raises(SelfCheckError, match="--compile on and --cuda-graphs on was asked for .*--compile off or "
                                             "--cuda-graphs off"):
        start_checked(lambda p: p, FastPath(True, True), lambda loop, p: failing("compile", "graphs"),
                      {"compile": "--compile on", "graphs": "--cuda-graphs on"})

    def broken(path):
        raise FakeCompileError("cannot compile: no C++ compiler")

    lines: list[str] = []
    with pytest.raises(FakeCompileError):  # the eager path cannot open: nothing to fall back to
        start_checked(broken, FastPath(compile=True), lambda loop, p: [], say=lines.append)
    assert lines == ["self-check: opening torch.compile raised FakeCompileError: cannot compile: no C++ compiler; "
                     "running eager instead (--compile off selects it)"]


class FakeCompileError(RuntimeError):
    """What compile_networks raises where it cannot compile."""


# ---- known answers: an engine that computes something else ---------------------------------------------------
@pytest.fixture(scope="module")
def trt(tmp_path_factory):
    from test_engines import load_stub

    with pytest.MonkeyPatch.context() as patch:
        yield load_stub(10, patch)
    sys.modules.pop("tensorrt", None)


@pytest.fixture(scope="module")
def with_stub_engine(networks, parity_models, trt, tmp_path_factory):
    """(networks whose pose guider runs a stand-in TensorRT engine, the engines folder, its known answers)."""
    from personalive_trt.engines import TensorRTBackend, build_engines
    from personalive_trt.engines.known_answers import record_known_answers
    from personalive_trt.export.onnx_export import export_network

    folder = tmp_path_factory.mktemp("engines")
    spec = networks.backends["pose_guider"].spec
    record = export_network(spec, parity_models, folder / "onnx", "fp32", verify=False)
    paths = build_engines([spec], lambda s, p: folder / "onnx" / record["onnx"], folder / "tensorrt",
                          precision="fp32", progress=None)
    backends = dict(networks.backends, pose_guider=TensorRTBackend(spec, paths[spec.name], device="cpu"))
    mixed = Networks(backends, networks.shapes, networks.dtype, networks.device, description="tensorrt")
    return mixed, folder, record_known_answers(networks, folder)


def test_known_answers_pass_on_the_engine_and_stop_it_when_it_is_wrong(with_stub_engine, trt, monkeypatch):
    from personalive_trt.engines.known_answers import check_known_answers

    mixed, folder, answers = with_stub_engine
    assert len(answers["files"]) == 9 and all((folder / "self_check" / f).is_file() for f in answers["files"])
    checks = check_known_answers(mixed, folder, answers, what="tensorrt")
    assert len(checks) == 9 and all(c.ok for c in checks), [c.describe() for c in checks]
    guider = next(c for c in checks if "pose_guider" in c.what)
    assert guider.error <= 1e-4  # fp32 engine (the stand-in runs the fp32 ONNX) against the torch module

    monkeypatch.setattr(trt, "stub_wrong_outputs", 1.5)
    with pytest.raises(SelfCheckError) as caught:
        open_checked(mixed, CONFIG, backend="tensorrt", engines_dir=folder, known_answers=answers)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("self-check failed: tensorrt pose_guider (fp32): max relative error 5.0e-01 > 1e-04 "
                              "against the torch outputs stored by build"), message
    assert message.endswith("not starting, since --backend tensorrt was asked for (run with --backend torch (or "
                            "rebuild the engines on this machine))"), message


def test_a_folder_without_known_answers_runs_with_one_line(with_stub_engine):
    mixed, folder, _ = with_stub_engine
    lines: list[str] = []
    start = open_checked(mixed, CONFIG, backend="tensorrt", engines_dir=folder, known_answers=None,
                         say=lines.append)
    assert lines == [f"{folder}: its engines have no known answers (built before build stored them), so they start "
                     "unchecked; rebuild to enable the self-check (personalive-trt build --force)"]
    assert start.path == FastPath() and start.checks == []  # on the CPU: no graphs, nothing else to check


def test_a_tampered_known_answer_is_refused(with_stub_engine, tmp_path):
    import shutil

    from personalive_trt.engines.cache import EngineError
    from personalive_trt.engines.known_answers import check_known_answers

    mixed, folder, answers = with_stub_engine
    copy = tmp_path / "engines"
    shutil.copytree(folder / "self_check", copy / "self_check")
    name = next(iter(answers["files"]))
    (copy / "self_check" / name).write_bytes((copy / "self_check" / name).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(EngineError, match=f"{name}: known answer does not match its record in answers.json"):
        check_known_answers(mixed, copy, answers)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_graph_replays_pass_their_self_check_on_a_gpu():
    """On a GPU, `run`'s default path: the runtime's real captured graphs against the same calls run eagerly (fp16,
    limit 1e-3); the check passes and nothing falls back."""
    from personalive_trt.models.weights import synthetic_models

    models = synthetic_models("tiny", device=torch.device("cuda"), dtype=torch.float16)
    lines: list[str] = []
    start = open_checked(Networks.from_models(models, CONFIG), CONFIG, say=lines.append, seed=3)
    assert lines == [] and start.path == FastPath(graphs=True), lines
    assert [c.what for c in start.checks] == ["CUDA graphs"] and start.checks[0].ok, start.checks
    assert start.runtime.use_graphs and start.runtime.graphs


# ---- the options of run and serve ---------------------------------------------------------------------------
def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("command, args, message", [
    ("run", ["--device", "cpu", "--cuda-graphs", "on"],
     "error: --cuda-graphs on: CUDA graphs need a CUDA device, and this run is on cpu (use --cuda-graphs auto or off)"),
    ("run", ["--backend", "onnxruntime", "--cuda-graphs", "on"],
     "error: --cuda-graphs on: --backend onnxruntime cannot be captured in CUDA graphs (use --backend torch or "
     "tensorrt, or --cuda-graphs auto)"),
    ("run", ["--reference-loop", "--cuda-graphs", "on"],
     "error: --cuda-graphs on: the streaming runtime replays captured steps, not --reference-loop"),
    ("run", ["--cuda-graphs", "always"], "error: --cuda-graphs 'always': expected one of auto, on, off"),
    ("serve", ["--device", "cpu", "--cuda-graphs", "on"],
     "error: --cuda-graphs on: CUDA graphs need a CUDA device, and this run is on cpu (use --cuda-graphs auto or off)"),
])
def test_cuda_graphs_option_refusals_are_one_line(command, args, message, tmp_path):
    """Refused before any network loads: nothing written."""
    from typer.testing import CliRunner

    from personalive_trt.cli import app

    if command == "serve":
        pytest.importorskip("fastapi")
    files = ["-r", "sample", "-d", "sample", "-o", str(tmp_path / "o.mp4")] if command == "run" else []
    result = CliRunner().invoke(app, [command, *files, "--weights", "synthetic", *args])
    assert one_error_line(result) == message
    assert not list(tmp_path.iterdir())


def test_open_animator_wires_the_options_into_the_self_check(parity_models, monkeypatch):
    """``open_animator`` opens the runtime through ``open_checked`` with the options as given: graphs and
    self-check switches, the explicit features, and the eager networks (the compile step goes in as a callable)."""
    from personalive_trt.runtime import animator as animator_module

    seen = {}

    def fake_open_checked(networks, config, **kwargs):
        seen.update(kwargs, compiled=getattr(networks, "compiled", None))
        raise SelfCheckError("stand-in")

    monkeypatch.setattr(animator_module, "open_checked", fake_open_checked)
    monkeypatch.setattr(animator_module, "open_networks", lambda *args, **kwargs: Networks.from_models(
        parity_models, CONFIG))
    with pytest.raises(SelfCheckError, match="stand-in"):
        animator_module.open_animator("synthetic", device="cpu", config=CONFIG, cuda_graphs="off", self_check=False)
    assert seen["graphs"] is False and seen["check"] is False and seen["explicit"] == {}
    assert seen["compile"] is None and seen["compiled"] is None and seen["backend"] == "torch"
    assert seen["known_answers"] is None  # the torch backend has no engines to check
    with pytest.raises(SelfCheckError):
        animator_module.open_animator("synthetic", device="cpu", config=CONFIG, cuda_graphs="on")
    assert seen["graphs"] is True and seen["check"] is True and seen["explicit"] == {"graphs": "--cuda-graphs on"}


def test_self_check_error_is_a_user_error():
    from personalive_trt.cli.params import user_errors

    assert SelfCheckError in user_errors()
