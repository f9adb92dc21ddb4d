"""The device check's records: summary.json from JUnit files, the matrix and the steps; env.json; the script's
argument errors. (``.ci/run`` runs ``scripts/gpu_check.sh --cpu`` itself, so the steps cannot rot.)"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from personalive_trt.bench import gpu_check

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_runtime" name="test_a" time="0.1"/>
<testcase classname="tests.test_runtime" name="test_b" time="0.1"><failure message="assert 1 == 2">x</failure></testcase>
<testcase classname="tests.test_vae" name="test_c" time="0.0"><skipped message="needs ../shared/reference"/></testcase>
<testcase classname="tests.test_vae" name="test_d" time="0.0"><skipped message="needs ../shared/reference"/></testcase>
<testcase classname="tests.test_bench" name="test_e" time="0.0"><error message="fixture broke">y</error></testcase>
</testsuite></testsuites>
"""


def write_run(tmp_path: Path, junit: str = JUNIT, failed_variants=()) -> Path:
    (tmp_path / "tests_suites.xml").write_text(junit)
    matrix = {"device": "cpu", "weights": "synthetic:tiny:device", "failed": list(failed_variants),
              "variants": [{"name": "reference_k0", "status": "ok"},
                           {"name": "runtime_graphs_k0", "status": "skipped"},
                           *({"name": n, "status": "failed"} for n in failed_variants)]}
    (tmp_path / "matrix.json").write_text(json.dumps(matrix))
    return tmp_path


def test_junit_counts_outcomes_and_skip_reasons(tmp_path):
    counts = gpu_check.junit_counts(write_run(tmp_path) / "tests_suites.xml")
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (1, 1, 1, 2)
    assert counts["failed_ids"] == ["tests.test_runtime::test_b", "tests.test_bench::test_e"]
    assert counts["skip_reasons"] == [{"reason": "needs ../shared/reference", "count": 2}]


def test_summary_is_ok_only_when_steps_tests_and_variants_are(tmp_path):
    clean = JUNIT.replace('<failure message="assert 1 == 2">x</failure>', "").replace(
        '<error message="fixture broke">y</error>', "")
    steps = [gpu_check.parse_step("gpu:0:12.5"), gpu_check.parse_step("matrix:0:80")]
    doc = gpu_check.summarize(write_run(tmp_path, clean), steps)
    assert doc["ok"] and doc["tests"] == {"passed": 3, "failed": 0, "errors": 0, "skipped": 2}
    assert doc["matrix"]["variants"] == {"reference_k0": "ok", "runtime_graphs_k0": "skipped"}

    assert not gpu_check.summarize(write_run(tmp_path), steps)["ok"]  # a failure and an error
    assert not gpu_check.summarize(write_run(tmp_path, clean, ["runtime_eager_k3"]), steps)["ok"]
    timed_out = [gpu_check.parse_step("matrix:124:120.0")]
    doc = gpu_check.summarize(write_run(tmp_path, clean), timed_out)
    assert not doc["ok"] and doc["steps"][0]["timed_out"]
    assert not gpu_check.summarize(tmp_path / "missing", steps)["ok"]  # no test file at all is not a pass


def test_summary_command_writes_the_file_and_exits_by_ok(tmp_path, capsys):
    write_run(tmp_path)
    assert gpu_check.main(["summary", str(tmp_path), "--step", "gpu:0:1.0"]) == 1
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["tests"]["failed"] == 1 and not doc["ok"]
    assert "NOT ok" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gpu_check.main(["summary", str(tmp_path), "--step", "gpu-no-status"])
    assert "expected NAME:RC:SECONDS" in capsys.readouterr().err


def test_unreadable_junit_is_one_line(tmp_path, capsys):
    (tmp_path / "tests_gpu.xml").write_text("<testsuites><unclosed")
    assert gpu_check.main(["summary", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "tests_gpu.xml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "summary.json").exists()


def test_env_describes_the_machine(tmp_path):
    out = tmp_path / "env.json"
    assert gpu_check.main(["env", "--out", str(out)]) == 0
    env = json.loads(out.read_text())
    import torch

    assert env["packages"]["torch"] == torch.__version__ and env["cuda_available"] == torch.cuda.is_available()
    assert len(env["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert "gpus" in env["nvidia_smi"] or "error" in env["nvidia_smi"]


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--out"], "--out needs a folder"),
    ([], "no output folder"),
    (["--cpu", "--compile", "--out", "x"], "--cpu and --compile exclude each other"),
])
def test_script_refuses_bad_arguments_in_one_line(args, message, tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: gpu_check.sh: {message}"), result.stderr
    assert not list(tmp_path.iterdir())
