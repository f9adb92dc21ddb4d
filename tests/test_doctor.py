"""``personalive-trt doctor``'s library (personalive_trt/doctor/): one real run on this CPU, and its parts on stand-ins.

The real run (module fixture, the cost of this file): the environment, the weights verdict of ``run``'s default
weights, and the synthetic stream (tiny weights, 64², window 1, 3 calls with a forced keyframe) through torch
eager fp32 (the reference, ``run``'s default on a CPU) and ONNX Runtime on the CPU, compared with it; the GPU and
compiled paths are skipped with their reasons. It keeps the tiny networks' ONNX export where the command does
(:func:`~personalive_trt.doctor.default_work_dir`, keyed by the versions and the exporting code), so only the first
run on a machine exports. The command (``personalive-trt doctor``) is checked around that same report. Everything
else (verdicts of broken or foreign folders, a failing path, the exit verdict, the camera probe's timeout, the
memory estimate's exact terms) is checked on cheap stand-ins.
"""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from personalive_trt.doctor import DoctorOptions, default_work_dir, run_doctor
from personalive_trt.doctor.environment import environment, probe_cameras
from personalive_trt.doctor.paths import PathPlan, PathResult, Shared, doctor_config, run_path
from personalive_trt.doctor.report import Report
from personalive_trt.doctor.verdicts import engines_verdict, weights_verdict


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("onnxruntime")
    lines: list[str] = []
    started = time.perf_counter()
    result = run_doctor(DoctorOptions(work_dir=default_work_dir(), memory_weights="synthetic", cameras=False),
                        say=lines.append)
    print(f"doctor: {time.perf_counter() - started:.0f} s\n" + result.markdown())
    return result, lines


def path(report, name: str) -> PathResult:
    return next(p for p in report.paths if p.name == name)


def test_the_default_path_works_on_this_cpu(report):
    result, lines = report
    assert result.exit_code == 0 and result.problems() == []
    assert result.default_path.name == "torch eager fp32 (cpu)" and result.default_path.status == "ok"
    assert result.verdict() == "the default path of `run` works here (torch eager fp32 (cpu))"
    assert result.markdown().splitlines()[2] == ("**Verdict:** the default path of `run` works here (torch eager "
                                                 "fp32 (cpu)) (exit 0).")
    assert any(line.startswith("running onnxruntime fp32 (cpu)") for line in lines)  # progress as it goes


def test_every_path_this_cpu_runs_matches_the_reference(report):
    result, _ = report
    eager, ort = path(result, "torch eager fp32 (cpu)"), path(result, "onnxruntime fp32 (cpu)")
    assert eager.status == "ok" and eager.error is None  # the reference itself
    assert eager.call_ms > 0 and eager.setup_s >= 0
    assert ort.status == "ok" and 0 < ort.error <= 1e-2 == ort.tolerance, ort  # fp32 ONNX Runtime: the parity 1e-2
    for name in ("torch eager fp16 (cuda)", "CUDA graphs fp16 (cuda)", "onnxruntime fp32 (cuda)"):
        skipped = path(result, name)
        assert skipped.status == "skipped" and skipped.detail.startswith("no CUDA device visible to torch"), skipped
    compiled = path(result, "torch.compile fp32 (cpu)")
    assert compiled.status == "skipped" and "--compile compiles it once there" in compiled.detail


def test_the_json_holds_what_the_markdown_says(report, tmp_path):
    result, _ = report
    result.write_json(tmp_path / "doctor.json")
    doc = json.loads((tmp_path / "doctor.json").read_text())
    text = result.markdown()
    assert doc["exit_code"] == 0 and doc["verdict"] in text
    assert [p["line"] for p in doc["paths"]] == [p.line() for p in result.paths]
    assert all(p["line"] in text for p in doc["paths"])
    assert all(w["line"] in text for w in doc["weights"])
    assert all(m["line"] in text for m in doc["memory"]["lines"]) and len(doc["memory"]["estimates"]) == 2
    env = doc["environment"]
    assert env["torch"] == torch.__version__ and env["cuda_available"] is torch.cuda.is_available()
    packages = {p["name"]: p for p in env["packages"]}
    assert packages["ONNX Runtime"]["status"] == "ok" and "CPU" in packages["ONNX Runtime"]["detail"]
    assert packages["PyAV"]["status"] == "ok" and packages["mediapipe"]["status"] == "ok"
    if packages["TensorRT"]["version"] is None:  # a missing optional package is a skip with its install line
        assert packages["TensorRT"]["status"] == "skipped"
        assert 'pip install "personalive-trt[tensorrt]"' in packages["TensorRT"]["line"]


# ---- a failing path, the exit verdict ---------------------------------------------------------------------------
def test_a_failing_path_is_one_line_with_its_cause_and_the_option_that_avoids_it(tmp_path):
    def broken(shared, noise):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nat line 3")

    plan = PathPlan("CUDA graphs fp16 (cuda)", torch.device("cpu"), torch.float16, 5e-2, "--cuda-graphs off",
                    broken, default=True)
    shared = Shared(config=doctor_config(torch.device("cpu")), frames=None, work_dir=tmp_path)
    result, outcome = run_path(plan, shared, reference=None)
    assert outcome is None and result.status == "failed"
    assert result.line() == ("CUDA graphs fp16 (cuda) (run's default here): FAILED: RuntimeError: CUDA error: no "
                             "kernel image is available for execution on the device; avoid it with --cuda-graphs off")


def test_the_exit_code_is_1_when_the_default_path_or_the_weights_fail(report):
    result, _ = report
    failed = dataclasses.replace(result.default_path, status="failed", detail="RuntimeError: boom", fix="--x")
    broken = Report(result.environment, result.weights, None, [failed, *result.paths[1:]], result.memory)
    assert broken.exit_code == 1
    assert broken.verdict() == ("the default path of `run` does NOT work here: torch eager fp32 (cpu) (run's default "
                                "here): FAILED: RuntimeError: boom; avoid it with --x")
    missing = weights_verdict("/no/such/weights")
    assert Report(result.environment, [missing], None, result.paths, result.memory).exit_code == 1


# ---- weights verdicts -----------------------------------------------------------------------------------------
def test_weights_verdicts(tmp_path, monkeypatch):
    synthetic = weights_verdict("synthetic", asked=False)
    assert synthetic.status == "info" and synthetic.text.startswith("synthetic (tiny): random weights")
    assert weights_verdict(str(tmp_path / "none")).line() == (
        f"weights {tmp_path / 'none'}: missing (no such folder); `personalive-trt weights download "
        f"{tmp_path / 'none'}`")
    assert weights_verdict(str(tmp_path / "none"), asked=False).status == "info"
    for sub in ("personalive", "sd-image-variations-diffusers", "sd-vae-ft-mse"):
        (tmp_path / "w" / sub).mkdir(parents=True)
    broken = weights_verdict(str(tmp_path / "w"))
    assert broken.status == "failed" and broken.text.startswith("broken: ") and "configs" in broken.text
    assert broken.fix == f"see `personalive-trt weights check {tmp_path / 'w'}`"

    # every file passing the check (the check itself is tests/test_weights.py's): released, unless the folder is
    # one that synth_weights.py wrote
    from personalive_trt import weights as weights_module

    monkeypatch.setattr(weights_module, "check_weights_dir", lambda root: [
        weights_module.ComponentReport("vae"), weights_module.ComponentReport("taesd", absent="absent")])
    released = weights_verdict(str(tmp_path / "w"))
    assert released.status == "ok" and released.text == ("released: every file passes the weights check; taesd "
                                                          "absent (optional: --vae tiny needs taesd)")
    (tmp_path / "w" / "weights_manifest.json").write_text(json.dumps({"config": "small", "seed": 0, "files": {}}))
    assert weights_verdict(str(tmp_path / "w")).text.startswith("synthetic (written by synth_weights.py, config "
                                                                "small, seed 0)")


# ---- engines verdicts -----------------------------------------------------------------------------------------
def write_build(folder, backend="tensorrt", engines=None):
    from personalive_trt.engines.folder import BuildRecord
    from personalive_trt.config import StreamConfig

    folder.mkdir(parents=True)
    record = BuildRecord(weights="synthetic", fingerprint="synthetic:tiny:seed0", unet_config={},
                         configs=[dataclasses.asdict(StreamConfig())], precisions=["fp16"], backend=backend,
                         precision="fp16")
    (folder / "build.json").write_text(json.dumps(dataclasses.asdict(record)))
    if engines:
        manifest = {"format": 1, "engines": {name: {"key": {
            "gpu": {"name": gpu, "compute_capability": cc}, "tensorrt_version": trt, "precision": "fp16",
            "profile": {}}} for name, (gpu, cc, trt) in engines.items()}}
        (folder / "tensorrt").mkdir()
        (folder / "tensorrt" / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def trt_stub(monkeypatch):
    import sys

    from test_engines import load_stub

    yield load_stub(10, monkeypatch)
    sys.modules.pop("tensorrt", None)


def test_engines_built_for_another_gpu_say_so_with_the_rebuild_command(tmp_path, trt_stub):
    folder = write_build(tmp_path / "e", engines={"vae_decoder": ("NVIDIA GeForce RTX 4090", "8.9", "10.9.0")})
    verdict, facts = engines_verdict(folder)
    assert verdict.status == "failed" and facts.engines["vae_decoder"]["gpu"] == "NVIDIA GeForce RTX 4090"
    assert verdict.text == ("TensorRT engines built for NVIDIA GeForce RTX 4090 (sm 8.9), TensorRT 10.9.0, fp16, "
                            "window 4, 512², --vae full; this machine has host (tensorrt stand-in) (sm 0.0); "
                            f"TensorRT {trt_stub.__version__} here")
    assert verdict.fix == (f"`personalive-trt build --weights synthetic --engines {folder} --backend tensorrt "
                           "--window 4 --vae full --precision fp16 --force`")


def test_engines_built_here_and_onnx_builds(tmp_path, trt_stub):
    here = ("host (tensorrt stand-in)", "0.0", trt_stub.__version__)
    verdict, _ = engines_verdict(write_build(tmp_path / "e", engines={"vae_decoder": here}))
    assert verdict.status == "info" and "built for this GPU" in verdict.text
    assert verdict.text.endswith("its engines have no known answers (built before build stored them), so they "
                                 "start unchecked; rebuild to enable the self-check (personalive-trt build --force)")
    verdict, _ = engines_verdict(write_build(tmp_path / "o", backend="onnxruntime"))
    assert verdict.text.startswith("onnxruntime build (fp16; window 4, 512², --vae full)")
    verdict, _ = engines_verdict(tmp_path / "none")
    assert verdict.status == "failed" and verdict.text == "missing (no such folder)"
    verdict, _ = engines_verdict(write_build(tmp_path / "s"), weights="synthetic:small")
    assert verdict.status == "failed" and verdict.text == "built from weights 'synthetic', not 'synthetic:small'"


def test_engines_that_this_machine_cannot_load(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    verdict, _ = engines_verdict(write_build(tmp_path / "e", engines={"vae_decoder": ("NVIDIA H100", "9.0", "10.13")}))
    assert verdict.status == "failed" and "this machine cannot load them: TensorRT" in verdict.text


# ---- machine facts --------------------------------------------------------------------------------------------
def test_cameras_never_block_the_report(tmp_path):
    hung = tmp_path / "hung-python"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    start = time.perf_counter()
    cameras = probe_cameras(["/dev/video0", "/dev/video1"], timeout=0.5, python=str(hung))
    assert time.perf_counter() - start < 5
    assert [(c.source, c.status) for c in cameras] == [("/dev/video0", "timed out"), ("/dev/video1", "timed out")]
    assert cameras[0].line() == "/dev/video0: did not answer in 0.5 s (a hung driver?); skipped"
    (missing,) = probe_cameras([str(tmp_path / "no-camera")], timeout=30)
    assert missing.status == "failed" and missing.detail == "does not open"


def test_environment_without_a_gpu_names_the_torch_build():
    env = environment(cameras=False)
    assert env.torch == torch.__version__ and env.cameras == []
    if not torch.cuda.is_available():
        assert env.gpus == [] and "sees no GPU" in env.torch_line()


# ---- memory ---------------------------------------------------------------------------------------------------
def test_the_state_estimate_is_what_a_runtime_allocates(parity_models):
    from personalive_trt.config import StreamConfig
    from personalive_trt.doctor.memory import runtime_state_bytes
    from personalive_trt.engines.networks import Networks
    from personalive_trt.runtime import StreamRuntime

    config = StreamConfig(resolution=64, window=2)
    networks = Networks.from_models(parity_models, config)
    runtime = StreamRuntime(networks, config)
    allocated = sum(t.numel() * t.element_size() for t in runtime.state_buffers().values())
    assert runtime_state_bytes(networks, config) == allocated


def test_memory_estimate_per_decoder_and_sessions():
    from personalive_trt.doctor.memory import CUDA_CONTEXT, GIB, estimate_run, memory_lines

    full, tiny = estimate_run("synthetic")
    assert (full.vae, tiny.vae) == ("full", "tiny") and full.weights < tiny.weights  # tiny adds TAESD
    assert full.widest_network == "vae_decoder" and full.workspace > tiny.workspace
    assert full.serve(3) == CUDA_CONTEXT + 3 * full.session and full.max_sessions(full.serve(3)) == 3
    (status, line), _ = memory_lines([full, tiny], free=full.serve(2), sessions=3)
    assert status == "failed" and line.endswith(f"{full.serve(2) / GIB:.1f} GiB free: fits, up to 2 session(s)")
    assert memory_lines([full], free=None)[0][1].endswith("no GPU here to compare with")


# ---- an engines folder's networks on their known answers ------------------------------------------------------
class Scaled:
    """A backend whose outputs come out scaled: an engine that computes something else without raising."""

    def __init__(self, backend, factor: float) -> None:
        self.backend, self.factor = backend, factor
        self.spec, self.device = backend.spec, backend.device
        self.input_dtypes, self.output_dtypes = backend.input_dtypes, backend.output_dtypes

    def infer(self, inputs, *, stable=()):
        return {k: v * self.factor for k, v in self.backend.infer(inputs).items()}


def test_engines_path_checks_each_network_on_its_known_answer(parity_models, tmp_path, monkeypatch):
    import types

    from personalive_trt.engines import folder as build_module
    from personalive_trt.engines.folder import read_build
    from personalive_trt.config import StreamConfig
    from personalive_trt.doctor.paths import engines_path
    from personalive_trt.engines.known_answers import record_known_answers
    from personalive_trt.engines.networks import Networks

    guider = Networks.from_models(parity_models, StreamConfig(resolution=64, window=1)).backends["pose_guider"]
    one = types.SimpleNamespace(backends={"pose_guider": guider}, dtype=torch.float32, description="torch")
    folder = write_build(tmp_path / "e", backend="onnxruntime")
    answers = record_known_answers(one, folder)
    record = read_build(folder)
    loaded = types.SimpleNamespace(backends={"pose_guider": guider}, description="onnxruntime")
    monkeypatch.setattr(build_module, "load_networks", lambda *args, **kwargs: loaded)
    ok = engines_path(folder, record, answers, cuda=False)
    assert ok.status == "ok" and ok.detail == "1 networks match the torch outputs stored by build", ok
    loaded.backends["pose_guider"] = Scaled(guider, 2.0)
    failed = engines_path(folder, record, answers, cuda=False)
    assert failed.status == "failed" and failed.detail == ("onnxruntime pose_guider (fp32): max relative error "
                                                           "1.0e+00 > 1e-04 against the torch outputs stored by build")
    assert failed.fix.startswith(f"`personalive-trt build --weights synthetic --engines {folder} --backend "
                                 "onnxruntime") and failed.fix.endswith("`, or --backend torch")
    skipped = engines_path(folder, record, None, cuda=False)
    assert skipped.status == "skipped" and skipped.detail.endswith(
        "its engines have no known answers (built before build stored them), so they start unchecked; rebuild to "
        "enable the self-check (personalive-trt build --force)")


# ---- the command ----------------------------------------------------------------------------------------------
def test_the_command_prints_the_report_writes_its_json_and_exits_with_its_code(report, tmp_path, monkeypatch):
    """``personalive-trt doctor``: the options reach :class:`DoctorOptions`, the progress goes to stderr, the
    markdown to stdout, ``--json`` writes :meth:`Report.as_dict`, and the exit code is the report's (0 here; 1 for
    a report whose default path fails)."""
    from typer.testing import CliRunner

    from personalive_trt import doctor as doctor_module
    from personalive_trt.cli import app

    result, _ = report
    seen = []

    def fake_run_doctor(options, say):
        seen.append(options)
        say("progress line")
        return result

    monkeypatch.setattr(doctor_module, "run_doctor", fake_run_doctor)
    out = tmp_path / "doctor.json"
    ran = CliRunner().invoke(app, ["doctor", "--weights", "synthetic", "--engines", str(tmp_path / "e"), "--compile",
                                   "--json", str(out), "--max-sessions", "3", "--no-cameras"])
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == result.markdown() + "\n" and "progress line" in ran.stderr
    assert json.loads(out.read_text()) == json.loads(json.dumps(result.as_dict()))
    (options,) = seen
    assert options == DoctorOptions(weights=("synthetic",), engines=tmp_path / "e", compile=True, cameras=False,
                                    work_dir=default_work_dir(), max_sessions=3)
    failing = dataclasses.replace(result, paths=[dataclasses.replace(p, status="failed", detail="stand-in failure")
                                                 if p.default else p for p in result.paths])
    monkeypatch.setattr(doctor_module, "run_doctor", lambda options, say: failing)
    ran = CliRunner().invoke(app, ["doctor", "--work-dir", str(tmp_path / "w")])
    assert ran.exit_code == failing.exit_code == 1 and "does NOT work here" in ran.stdout


def test_the_command_refuses_bad_options_in_one_line():
    from typer.testing import CliRunner

    from personalive_trt.cli import app

    ran = CliRunner().invoke(app, ["doctor", "--max-sessions", "0"])
    assert ran.exit_code == 1 and ran.output.strip() == "error: max_sessions 0: expected >= 1"
