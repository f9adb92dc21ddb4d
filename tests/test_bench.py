"""The streaming benchmark (``personalive-trt bench`` / ``benchmarks/bench_stream.py``) on CPU.

CI checks the report's fields, types and signs, never its speed: timings on shared CI cores mean nothing.
One in-process run with tiny synthetic weights at 64 px covers the runtime, the eager breakdown, FLOP
counting, the latency model, ``--compare`` and ``--json``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personalive_trt import bench
from personalive_trt.bench import flops as bench_flops

REPO = Path(__file__).resolve().parents[1]
PERCENTILE_KEYS = {"p50", "p95", "p99", "mean", "min", "max"}


def invoke(*args: str):
    return CliRunner().invoke(bench.standalone_app(), list(args))


def check_percentiles(stats: dict, what: str) -> None:
    assert set(stats) == PERCENTILE_KEYS, what
    for key, value in stats.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, f"{what}.{key} = {value!r}"
    assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"], what


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    import sys

    out = tmp_path_factory.mktemp("bench") / "report.json"
    args = ["--weights", "synthetic", "--resolution", "64", "--warmup", "0", "--calls", "2", "--compare",
            "--json", str(out), "--device", "cpu"]  # asked for: on a GPU machine auto would pick CUDA
    saved, sys.argv = sys.argv, ["personalive-trt", "bench", *args]  # what the report records as the command
    try:
        result = invoke(*args)
    finally:
        sys.argv = saved
    assert result.exit_code == 0, result.output
    assert "speed ratio (reference / runtime)" in result.output  # the printed --compare ratio
    return json.loads(out.read_text())


def test_report_identity_fields(report):
    assert report["schema"] == 1 and report["mode"] == "stream" and report["options"]["mode"] == "stream"
    assert report["options"]["max_frames"] is None
    assert report["command"].startswith("personalive-trt bench --weights synthetic --resolution 64")
    assert report["options"]["compare"] is True and report["options"]["calls"] == 2
    assert report["device"].startswith("CPU")
    assert report["backend"] == "torch" and report["graphs"] is False
    assert report["options"]["compile"] == "auto" and report["compile"] is None  # auto: no warm cache here
    assert report["weights"] == "synthetic" and report["dtype"] == "float32"
    assert report["config"] == {"window": 4, "steps": 4, "resolution": 64, "keyframes": 0, "keyframe_threshold": 17.0,
                                "keyframe_start": 8, "max_keyframes": 0, "vae": "full"}
    assert report["keyframes"] == 0 and report["warmup_calls"] == 0 and report["measured_calls"] == 2
    assert isinstance(report["threads"], int) and report["threads"] >= 1


def test_report_timings(report):
    for key in ("setup_s", "reference_fusion_cold_ms", "reference_fusion_ms", "time_to_first_frame_ms", "fps",
                "capture_fps", "inherent_delay_ms", "capture_wait_ms", "time_to_first_driven_frame_ms"):
        assert positive(report[key]), f"{key} = {report[key]!r}"
    check_percentiles(report["step_ms"], "step_ms")
    check_percentiles(report["chunk_latency_ms"], "chunk_latency_ms")
    check_percentiles(report["host_staging_ms"], "host_staging_ms")
    assert report["step_clock"] == "perf_counter"  # CPU; CUDA events on a GPU (test_report_on_cuda)
    # the figure the offline mode's report has too (tests/test_bench_offline.py)
    assert report["per_frame_ms"] == pytest.approx(report["step_ms"]["mean"] / 4, rel=1e-3)
    assert report["throughput_mode"] == "sequential"  # CPU: submit is synchronous
    # Time to first frame includes the fusion and one call.
    assert report["time_to_first_frame_ms"] > report["reference_fusion_ms"]
    assert report["time_to_first_driven_frame_ms"] > report["time_to_first_frame_ms"]


def test_latency_model_is_consistent(report):
    window, steps, rate = 4, 4, report["capture_fps"]
    assert rate == pytest.approx(report["fps"], rel=1e-3)  # no --capture-fps: the measured rate
    assert report["inherent_delay_ms"] == pytest.approx((steps - 1) * window / rate * 1e3, rel=1e-3)
    assert report["capture_wait_ms"] == pytest.approx((window - 1) / (2 * rate) * 1e3, rel=1e-3)
    g2g = report["glass_to_glass_ms"]
    assert set(g2g) == {"p50", "p95", "p99", "oldest_frame_p50"}
    for key in ("p50", "p95", "p99"):
        expected = report["capture_wait_ms"] + report["inherent_delay_ms"] + report["chunk_latency_ms"][key]
        assert g2g[key] == pytest.approx(expected, abs=0.01)
    assert g2g["oldest_frame_p50"] > g2g["p50"]


def test_stage_breakdown(report):
    stages = report["stages_ms"]
    assert stages["mode"].startswith("measured calls")
    assert set(stages["networks"]) == set(bench.STEADY_ROLES)  # a steady call runs exactly these five
    assert all(positive(ms) for ms in stages["networks"].values())
    assert positive(stages["eager_step_p50"])
    # glue = call - networks: may be tiny but the networks can never exceed the call they ran in
    assert stages["glue"] >= -1e-3
    assert sum(stages["networks"].values()) <= stages["eager_step_p50"] + 1e-3


def test_flops_and_memory(report):
    flops = report["flops"]
    assert flops["source"].startswith("counted")
    assert set(flops["per_network"]) == set(bench.STEADY_ROLES)
    assert all(isinstance(v, int) and v > 0 for v in flops["per_network"].values())
    assert flops["per_step"] == sum(flops["per_network"].values())
    # the fixed-size networks do not shrink with the canvas: the full-size count applies to the pose encoder
    # (LivePortrait's motion extractor) exactly; the tiny weights' motion encoder is narrower than the released one
    assert flops["per_network"]["pose_encoder"] == 46549358592
    assert 0 < flops["per_network"]["motion_encoder"] < 426926707200
    assert flops["tflops"] == pytest.approx(flops["per_step"] / (report["step_ms"]["p50"] * 1e-3) / 1e12, rel=1e-3)
    assert report["memory"]["kind"] == "host_rss" and positive(report["memory"]["peak_mb"])


def test_compare_fields(report):
    cmp = report["compare"]
    assert cmp["reference"].startswith("reference loop")
    check_percentiles(cmp["step_ms"], "compare.step_ms")
    for key in ("reference_fusion_ms", "time_to_first_frame_ms", "fps", "speedup"):
        assert positive(cmp[key]), f"compare.{key} = {cmp[key]!r}"
    assert cmp["speedup"] == pytest.approx(cmp["step_ms"]["p50"] / report["step_ms"]["p50"], rel=1e-2)


# ---- cheap checks: options, errors, the FLOP table ------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--keyframes", "4"], "--keyframes 4: expected 0..3"),
    (["--backend", "jax"], "--backend 'jax'"),
    (["--resolution", "100"], "--resolution 100"),
    (["--calls", "0"], "--calls 0"),
    (["--device", "cpu", "--dtype", "fp16"], "fp16 needs"),
    (["--capture-fps", "-5"], "--capture-fps"),
    (["--compile", "maybe"], "--compile 'maybe': expected auto, on or off"),
    (["--backend", "tensorrt", "--compile", "on"], "--compile on: only the torch backend"),
])
def test_bad_options_are_one_line_errors(args, message):
    result = invoke(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_tensorrt_missing_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    import torch

    # A CUDA machine without TensorRT (pretended: the device is resolved, nothing is allocated on it).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    from personalive_trt.engines import TENSORRT_INSTALL_HINT

    result = invoke("--backend", "tensorrt")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {TENSORRT_INSTALL_HINT}"


def test_tensorrt_auto_never_resolves_to_the_cpu(monkeypatch):
    """Without CUDA, `--backend tensorrt` (device auto) is refused for the device, before TensorRT is looked for."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("--backend", "tensorrt")
    assert result.exit_code == 1
    assert "error: --backend tensorrt runs on a CUDA device" in result.output, result.output


def test_forced_keyframe_config():
    """--keyframes K: every keyframe test adds one (threshold -1), from call 1 on, at most K."""
    config = bench.stream_config(bench.BenchOptions(keyframes=2, resolution=64))
    assert (config.keyframe_threshold, config.keyframe_start, config.max_keyframes) == (-1.0, 0, 2)
    assert bench.stream_config(bench.BenchOptions(keyframes=0)).max_keyframes == 0


def test_reference_flops_interpolates_keyframes(tmp_path, monkeypatch):
    table = {key: 10 for key in bench_flops._JSON_KEYS.values()}
    table[bench_flops._JSON_UNET[0]], table[bench_flops._JSON_UNET[1]] = 300, 600
    path = tmp_path / "flops.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(bench.FLOPS_JSON_ENV, str(path))
    assert [bench.reference_flops(k)["denoising_unet"] for k in range(4)] == [300, 400, 500, 600]
    assert bench.reference_flops(0)["vae_decoder"] == 10
    monkeypatch.setenv(bench.FLOPS_JSON_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(bench.BenchError, match="absent.json: cannot read the FLOP table"):
        bench.reference_flops(0)  # the table ships with the package: its absence is an error, not "no figures"


def test_flop_table_ships_with_the_package(monkeypatch):
    """The default table is package data (no ../shared needed: the GPU check's machine has none)."""
    monkeypatch.delenv(bench.FLOPS_JSON_ENV, raising=False)
    path = bench_flops.flops_json_path()
    assert path.parent == Path(bench_flops.__file__).resolve().parent and path.is_file()
    assert sum(bench.reference_flops(0).values()) == pytest.approx(34_642.3e9, rel=1e-5)


def test_shipped_flop_table_is_the_reference_copy(shared_reference):
    shipped = json.loads(bench_flops.DEFAULT_FLOPS_JSON.read_text())
    assert shipped == json.loads((shared_reference / "flops_full_512.json").read_text())


def test_shared_flops_table_matches_the_readme(shared_reference):
    """The real table: one no-keyframe step = 34,642.3 GFLOP (shared README section 7)."""
    per_role = bench.reference_flops(0)
    assert per_role is not None
    assert sum(per_role.values()) == pytest.approx(34_642.3e9, rel=1e-5)
    assert sum(bench.reference_flops(3).values()) == pytest.approx(41_750.2e9, rel=1e-5)


def test_script_wrapper_help():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_stream.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--backend", "--no-graph", "--weights", "--window", "--keyframes", "--dtype", "--json",
                   "--compare", "--resolution"):
        assert option in done.stdout


@pytest.mark.slow
def test_forced_keyframes_are_in_effect(tmp_path):
    out = tmp_path / "k1.json"
    result = invoke("--weights", "synthetic", "--resolution", "64", "--warmup", "0", "--calls", "1",
                    "--keyframes", "1", "--json", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["keyframes"] == 1 and report["config"]["max_keyframes"] == 1


# ---- the matrix: one schema for every variant (benchmarks/matrix.py) --------------------------------
# Written out here, not read from matrix.VARIANT_FIELDS: dropping a field there must fail this test.
REQUIRED_FIELDS = {"name", "device", "vae", "compile", "graphs", "keyframes", "fps", "step_ms", "ratio_to_reference",
                   "tflops_achieved", "peak_memory_bytes", "status", "error", "engine", "dtype", "step_clock",
                   "host_staging_ms", "chunk_latency_ms", "flops_per_step", "stages_ms", "compile_s", "per_frame_ms"}
MATRIX_ARGS = ["--resolution", "64", "--window", "1", "--calls", "1", "--warmup", "0",
               "--variants", "reference_k0,runtime_eager_k0,runtime_graphs_k0"]


def run_matrix_cli(tmp_path_factory, *args: str) -> dict:
    from personalive_trt.bench import matrix

    out = tmp_path_factory.mktemp("matrix") / "matrix.json"
    assert matrix.main(["--out", str(out), *args, *MATRIX_ARGS]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def cpu_matrix(tmp_path_factory) -> dict:
    return run_matrix_cli(tmp_path_factory, "--cpu")  # tiny device-filled weights on the CPU, 64 px, 1 frame


def check_matrix(doc: dict, cuda: bool) -> dict:
    assert doc["schema"] == 1 and doc["failed"] == []
    records = {r["name"]: r for r in doc["variants"]}
    assert list(records) == ["reference_k0", "runtime_eager_k0", "runtime_graphs_k0"]
    for record in records.values():
        missing = REQUIRED_FIELDS - set(record)
        assert not missing, (record["name"], missing)
        assert record["vae"] == "full" and record["compile"] is False and record["keyframes"] == 0
        assert record["compile_s"] is None
    ok = [r for r in records.values() if r["status"] == "ok"]
    for record in ok:
        assert set(record["step_ms"]) >= {"p50", "p95", "p99"} and positive(record["step_ms"]["p50"]), record
        for key in ("fps", "ratio_to_reference", "tflops_achieved", "peak_memory_bytes", "flops_per_step"):
            assert positive(record[key]), (record["name"], key, record[key])
        assert record["tflops_achieved"] == pytest.approx(
            record["flops_per_step"] / (record["step_ms"]["p50"] * 1e-3) / 1e12, rel=1e-3)
        assert record["per_frame_ms"] == pytest.approx(record["step_ms"]["mean"] / record["window"], rel=1e-3)
    reference, eager = records["reference_k0"], records["runtime_eager_k0"]
    assert reference["engine"] == "reference" and reference["ratio_to_reference"] == 1.0
    assert reference["host_staging_ms"] is None and reference["stages_ms"] is None
    assert eager["ratio_to_reference"] == pytest.approx(reference["step_ms"]["p50"] / eager["step_ms"]["p50"],
                                                        rel=1e-3)
    check_percentiles(eager["host_staging_ms"], "host_staging_ms")
    assert set(eager["stages_ms"]["networks"]) == set(bench.STEADY_ROLES)
    assert eager["step_clock"] == ("cuda_events" if cuda else "perf_counter")
    return records


def test_matrix_schema_on_cpu(cpu_matrix):
    records = check_matrix(cpu_matrix, cuda=False)
    assert cpu_matrix["weights_source"] == "synthetic:tiny:device (seed 0)" and cpu_matrix["dtype"] == "float32"
    assert all(r["device"].startswith("CPU") for r in records.values())
    graphs = records["runtime_graphs_k0"]
    assert graphs["status"] == "skipped" and "CUDA" in graphs["error"] and graphs["step_ms"] is None
    assert records["runtime_eager_k0"]["throughput_mode"] == "sequential"
    assert records["runtime_eager_k0"]["peak_memory_kind"] == "host_peak_rss_process"


def test_matrix_has_the_compiled_variants():
    from personalive_trt.bench import matrix

    compiled = {v.name: v for v in matrix.VARIANTS if v.compile}
    assert set(compiled) == {"runtime_graphs_compile_k0", "runtime_graphs_compile_k3"}
    assert all(v.graphs and v.engine == "runtime" for v in compiled.values())
    assert {v.keyframes for v in compiled.values()} == {0, 3}
    record = matrix.variant_record(compiled["runtime_graphs_compile_k0"], status="skipped")
    assert record["compile"] is True and record["compile_s"] is None and set(record) == set(matrix.VARIANT_FIELDS)


def test_matrix_rejects_unknown_variants(tmp_path, capsys):
    from personalive_trt.bench import matrix

    with pytest.raises(SystemExit):
        matrix.main(["--out", str(tmp_path / "m.json"), "--variants", "runtime_turbo"])
    assert "unknown variant(s) runtime_turbo" in capsys.readouterr().err


# ---- CUDA counterparts (skipped without a GPU; they run in scripts/gpu_check.sh) -------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_report_on_cuda(tmp_path):
    out = tmp_path / "report.json"
    result = invoke("--weights", "synthetic", "--resolution", "64", "--warmup", "1", "--calls", "3", "--compare",
                    "--json", str(out), "--device", "cuda")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert not report["device"].startswith("CPU") and report["dtype"] == "float16"  # auto dtype on CUDA
    assert report["graphs"] is True and report["throughput_mode"] == "pipelined"
    assert report["step_clock"] == "cuda_events"
    check_percentiles(report["step_ms"], "step_ms")
    check_percentiles(report["host_staging_ms"], "host_staging_ms")
    assert report["stages_ms"]["mode"] == "separate eager runtime, same networks"
    assert set(report["stages_ms"]["networks"]) == set(bench.STEADY_ROLES)
    memory = report["memory"]
    assert memory["kind"] == "cuda" and positive(memory["peak_allocated_mb"])
    assert positive(report["compare"]["speedup"])


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_matrix_schema_on_cuda(tmp_path_factory):
    doc = run_matrix_cli(tmp_path_factory, "--weights", "synthetic:tiny:device")
    records = check_matrix(doc, cuda=True)
    assert doc["dtype"] == "float16"
    graphs = records["runtime_graphs_k0"]
    assert graphs["status"] == "ok" and graphs["graphs"] is True and graphs["stages_ms"] is None
    assert graphs["step_clock"] == "cuda_events" and graphs["throughput_mode"] == "pipelined"
    assert all(r["peak_memory_kind"] == "cuda_max_memory_allocated" for r in records.values())


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_matrix_compiled_variant_on_cuda(tmp_path):
    """The compiled variant on tiny weights: measured, with a cold and a warm (fresh process) compile report."""
    from personalive_trt.bench import matrix

    out = tmp_path / "matrix.json"
    assert matrix.main(["--out", str(out), "--weights", "synthetic:tiny:device", "--resolution", "64", "--window",
                        "1", "--calls", "1", "--warmup", "0", "--variants", "runtime_graphs_compile_k0"]) == 0
    record = json.loads(out.read_text())["variants"][0]
    assert record["status"] == "ok" and record["compile"] is True and record["graphs"] is True
    cold, warm = record["compile_s"]["cold"], record["compile_s"]["warm"]
    assert cold["cache"] == "cold" and warm["cache"] == "warm" and cold["digest"] == warm["digest"]
    assert positive(cold["total"]) and positive(warm["total"])
