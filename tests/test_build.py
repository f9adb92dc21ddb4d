"""`personalive-trt build` + `run --backend onnxruntime`: the exported pipeline against the torch one."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from personalive_trt import StreamConfig
from personalive_trt.build.driver import build
from personalive_trt.engines.folder import BuildError, load_networks, read_build
from personalive_trt.engines.known_answers import check_known_answers, read_record
from personalive_trt.cli import app

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def engines_dir(parity_onnx_build):
    """``build --backend onnxruntime --resolution 128`` of the tiny synthetic weights (tests/conftest.py); its
    runtime is compared with the Animator over the parity stream in tests/test_runtime.py."""
    return parity_onnx_build


def test_build_record_and_up_to_date(engines_dir):
    record = read_build(engines_dir)
    assert record.weights == "synthetic" and record.precisions == ["fp32"] and record.backend == "onnxruntime"
    assert record.configs == [{"window": 4, "steps": 4, "step_length": 333, "resolution": 128,
                               "keyframe_threshold": 17.0, "keyframe_start": 8, "max_keyframes": 3, "vae": "full"}]
    assert record.vae == "full"
    answers = read_record(engines_dir)
    lines: list[str] = []
    build("synthetic", engines_dir, backend="onnxruntime", resolution=128, log=lines.append)  # nothing to redo
    assert any("up to date" in line for line in lines) and not any(line.startswith("exporting") for line in lines)
    assert read_record(engines_dir) == answers  # reused exports keep their known answers
    assert not any("known answers" in line for line in lines), lines


def test_build_stores_known_answers_that_its_engines_pass(engines_dir):
    """One known answer per network at its smallest shapes, with the torch fp32 outputs; the ONNX Runtime
    networks of the build meet each within its export tolerance (the start-up self-check's numbers)."""
    record = read_record(engines_dir)
    assert record is not None and record["format"] == 1 and record["seed"] == 0
    networks = load_networks(engines_dir, "onnxruntime", "synthetic", StreamConfig(resolution=128), "cpu")
    assert sorted(entry["network"] for entry in record["files"].values()) == sorted(
        backend.spec.name for backend in networks.backends.values())
    for name, entry in record["files"].items():
        spec = next(b.spec for b in networks.backends.values() if b.spec.name == entry["network"])
        assert entry["inputs"] == {t.name: list(t.min_shape) for t in spec.inputs}, name
    checks = check_known_answers(networks, engines_dir, record, what="onnxruntime")
    assert len(checks) == 9 and all(c.ok and c.error is not None for c in checks), [c.describe() for c in checks]


def test_mismatching_engines_are_refused(engines_dir, tmp_path):
    cpu = torch.device("cpu")
    config = StreamConfig(resolution=128)
    with pytest.raises(BuildError, match=r"built from weights 'synthetic', not 'synthetic:small'"):
        load_networks(engines_dir, "onnxruntime", "synthetic:small", config, cpu)
    with pytest.raises(BuildError, match=r"built for window\(s\) \[4\].*--window 2"):
        load_networks(engines_dir, "onnxruntime", "synthetic", StreamConfig(resolution=128, window=2), cpu)
    with pytest.raises(BuildError, match=r"built for window\(s\) \[4\]"):  # max_keyframes sizes the banks
        load_networks(engines_dir, "onnxruntime", "synthetic", StreamConfig(resolution=128, max_keyframes=2), cpu)
    with pytest.raises(BuildError, match="no engines built here"):
        load_networks(tmp_path, "onnxruntime", "synthetic", StreamConfig(), cpu)
    with pytest.raises(BuildError, match="holds engines of other weights"):
        build("synthetic:small", engines_dir, backend="onnxruntime", log=lambda line: None)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
@pytest.mark.parametrize("command", [
    ["run", "--reference", "sample", "--driving", "sample", "--output", "OUT", "--backend", "tensorrt"],
    ["build", "--backend", "tensorrt", "--engines", "ENG"],
])
def test_tensorrt_backend_without_tensorrt_fails_in_one_line(command, tmp_path):
    args = [str(tmp_path / "o.mp4") if a == "OUT" else str(tmp_path / "eng") if a == "ENG" else a for a in command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and 'pip install "personalive-trt[tensorrt]"' in errors[0], result.output
    assert not list(tmp_path.iterdir())  # nothing written, not even the engines folder
