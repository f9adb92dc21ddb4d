"""``personalive-trt bench --mode offline``: the original's offline loop per frame on the stream mode's clip (on
the offline runtime by default, as ``run --mode offline``), its recorded FaceMesh boxes, the options it refuses,
and the matrix's offline variants (the reference loop, the runtime).

CI checks the report's fields and their arithmetic, never its speed. The run is about the plumbing (inputs,
passes, figures), so it takes the cheap road of tests/test_offline_cli.py: tiny synthetic weights at 64 px, the
clip's first 16 frames (7 windows), and the pose and motion encoders (the pose encoder full size even in the tiny weights) and
the denoising UNet answering zeros (tests/test_offline.py's stand-ins), over the session's tiny weights
(``parity_models``, what ``--weights synthetic`` loads; loading them costs more than the whole pass).
"""
from __future__ import annotations

import json

import pytest

from test_bench import check_percentiles, invoke, positive
from test_cli import assert_one_line_error
from personalive_trt.bench import matrix, offline

STAND_INS = ("pose_encoder", "motion_encoder", "denoising_unet")


def cheaply(patch: pytest.MonkeyPatch, models) -> None:
    """The loaded tiny weights and the stand-ins instead of loading the weights and running every network."""
    from personalive_trt.models import weights
    from test_offline import with_stand_ins

    opened = offline.open_offline_networks
    patch.setattr(weights, "load_models", lambda *args, **kwargs: models)
    patch.setattr(offline, "open_offline_networks", lambda *args: with_stand_ins(opened(*args), STAND_INS)[0])


@pytest.fixture(scope="module")
def offline_report(tmp_path_factory, parity_models):
    out = tmp_path_factory.mktemp("bench_offline") / "report.json"
    with pytest.MonkeyPatch.context() as patch:
        cheaply(patch, parity_models)
        result = invoke("--mode", "offline", "--weights", "synthetic", "--resolution", "64", "--max-frames", "18",
                        "--warmup", "1", "--json", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_offline_report_times_every_window_of_the_clip(offline_report):
    report, output = offline_report
    assert report["mode"] == "offline" and report["options"]["mode"] == "offline"
    # what run --mode offline runs by default: the offline runtime (eager on the CPU, not compiled)
    assert report["runtime"].startswith("offline stream runtime (eager)") and report["loop"] == "runtime"
    assert report["graphs"] is False and report["compile"] is None and report["options"]["reference_loop"] is False
    assert report["device"].startswith("CPU") and report["dtype"] == "float32" and report["weights"] == "synthetic"
    assert report["config"] == {"vae": "full", "window": 4, "steps": 4, "resolution": 64, "keyframe_threshold": 17.0,
                                "keyframe_start": 8, "keyframe_limit": 20}
    # 18 frames capped -> N = 16, then the 12-frame mirrored tail: 16 / 4 + 3 windows, each timed once
    assert (report["frames"], report["windows"], report["warmup_windows"], report["measured_passes"]) == (16, 7, 1, 1)
    assert report["options"]["calls"] == 1  # --mode offline's default: one pass
    check_percentiles(report["step_ms"], "step_ms")
    assert report["step_clock"] == "perf_counter" and len(report["pass_ms"]) == 1
    assert report["pass_ms"][0] == pytest.approx(report["step_ms"]["mean"] * 7, rel=1e-3)
    assert report["per_frame_ms"] == pytest.approx(report["pass_ms"][0] / 16, rel=1e-3)
    assert report["fps"] == pytest.approx(1e3 / report["per_frame_ms"], rel=1e-3)
    for key in ("prepare_s", "setup_s", "reference_fusion_ms", "reference_fusion_cold_ms"):
        assert positive(report[key]), (key, report[key])
    assert report["keyframe_banks"] == 0  # stand-in motion: every distance is 0, below the threshold
    assert report["memory"]["kind"] == "host_rss" and positive(report["memory"]["peak_mb"])
    assert "per frame" in output and "16 frames, 7 windows" in output


def test_recorded_boxes_cut_the_sample_as_facemesh_does():
    """The boxes the bench cuts with (MediaPipe is absent on the device machine) are FaceMesh's on the sample."""
    pytest.importorskip("mediapipe")
    from personalive_trt import media
    from personalive_trt.bench.session import sample_frames
    from personalive_trt.media import sample
    from personalive_trt.media.facemesh import FaceMesh

    recorded = json.loads(offline.CROPS_JSON.read_text())
    reference = media.read_image(sample.sample_reference(), like_original=True)
    _, frames = sample_frames(None)
    assert len(recorded["frames"]) == len(frames) == 60
    with FaceMesh() as mesh:
        for index, (image, fields) in enumerate(zip((reference, *frames), (recorded["reference"], *recorded["frames"]))):
            crop = mesh.find(image)
            assert crop is not None, index
            # the integer landmark span exactly; the scaled square to 1e-9 px (JSON keeps the float's digits)
            assert list(crop.box_raw) == fields["box_raw"], index
            assert list(crop.box) == pytest.approx(fields["box"], abs=1e-9), index


def test_recorded_mesh_never_makes_up_a_box():
    mesh = offline.RecordedMesh([{"box_raw": [1, 2, 3, 4], "box": [0.5, 1.5, 3.5, 4.5]}], "the portrait")
    assert mesh.find(None).slices == (1, 4, 0, 3)
    with pytest.raises(offline.BenchError, match="1 recorded box"):
        mesh.find(None)


@pytest.mark.parametrize("args, message", [
    (("--mode", "sideways"), "--mode 'sideways': expected stream or offline"),
    (("--mode", "offline", "--backend", "onnxruntime"), "not supported yet in --mode offline: --backend onnxruntime"),
    (("--mode", "offline", "--keyframes", "1"), "--keyframes 1: --mode offline takes its keyframes"),
    (("--mode", "offline", "--window", "2"), "--window 2: --mode offline runs the original's window of 4"),
    (("--mode", "offline", "--compare"), "--compare applies to --mode stream"),
    (("--mode", "offline", "--capture-fps", "25"), "--capture-fps applies to --mode stream"),
    (("--mode", "offline", "--reference-loop", "--compile", "on"),
     "--compile on: compiles the offline runtime's networks, not --reference-loop's"),
    (("--reference-loop",), "--reference-loop applies to --mode offline"),
    (("--mode", "offline", "--max-frames", "0"), "--max-frames 0: expected a positive number of frames"),
    (("--max-frames", "16"), "--max-frames applies to --mode offline"),
    (("--mode", "offline", "--max-frames", "12"), "sample driving clip: 12 frames (capped at --max-frames 12); "
                                                   "the offline mode needs at least 16"),
])
def test_offline_refusals_are_one_line(args, message):
    result = invoke("--weights", "synthetic", "--device", "cpu", "--resolution", "64", *args)
    assert_one_line_error(result, message)


def test_matrix_offline_variant_ratio_is_per_frame():
    """The offline variant's ratio_to_reference compares per-frame times with reference_k0 (its windows differ:
    a step p50 would not say what a frame costs)."""
    reference = matrix.variant_record(matrix.Variant("reference_k0", "reference"), status="ok",
                                      step_ms={"p50": 400.0}, per_frame_ms=100.0, vae="full")
    variants = {v.name: v for v in matrix.VARIANTS}
    variant = variants["offline_reference"]
    assert variant.engine == "offline" and not variant.graphs and not variant.compile  # OfflineAnimator
    assert [(variants[name].engine, variants[name].graphs) for name in ("offline_runtime_graphs",
            "offline_runtime_eager")] == [("offline_runtime", True), ("offline_runtime", False)]
    record = matrix.variant_record(variant, status="ok", step_ms={"p50": 300.0}, per_frame_ms=125.0, vae="full")
    assert set(record) == set(matrix.VARIANT_FIELDS)
    matrix._derive([reference, record], {})
    assert reference["ratio_to_reference"] == 1.0
    assert record["ratio_to_reference"] == 0.8 and record["flops_per_step"] is None


def test_matrix_offline_variants_on_cpu(tmp_path, monkeypatch, parity_models):
    """The offline variants end to end on the CPU: the sample's first 16 frames, stand-ins; each times its own
    loop (the reference loop, the runtime eager; the graphs variant is skipped on a CPU)."""
    from personalive_trt.runtime.offline_loop import OfflineAnimator
    from personalive_trt.runtime.offline_stream import OfflineStreamRuntime

    prepare, measure = offline.sample_offline_inputs, offline.measure_offline
    timed = []
    monkeypatch.setattr(offline, "sample_offline_inputs", lambda config, max_frames: prepare(config, 16))
    monkeypatch.setattr(offline, "measure_offline",
                        lambda loop, *args: timed.append(type(loop)) or measure(loop, *args))
    cheaply(monkeypatch, parity_models)
    out = tmp_path / "matrix.json"
    assert matrix.main(["--out", str(out), "--cpu", "--variants", "offline_reference,offline_runtime_eager,"
                        "offline_runtime_graphs", "--resolution", "64", "--window", "1", "--warmup", "0"]) == 0
    doc = json.loads(out.read_text())
    assert timed == [OfflineAnimator, OfflineStreamRuntime]
    assert [record["status"] for record in doc["variants"]] == ["ok", "ok", "skipped"] and doc["failed"] == []
    assert [record["engine"] for record in doc["variants"]] == ["offline", "offline_runtime", "offline_runtime"]
    for record in doc["variants"][:2]:
        assert set(record) >= set(matrix.VARIANT_FIELDS) and record["window"] == 4  # not --window
        assert (record["frames"], record["windows"], record["calls"], record["keyframe_banks"]) == (16, 7, 7, 0)
        check_percentiles(record["step_ms"], "step_ms")
        assert record["per_frame_ms"] == pytest.approx(record["step_ms"]["mean"] * 7 / 16, rel=1e-3)
        assert record["fps"] == pytest.approx(1e3 / record["per_frame_ms"], rel=1e-3)
        assert record["ratio_to_reference"] is None  # no reference_k0 in this run
        assert record["peak_memory_kind"] == "host_peak_rss_process" and positive(record["peak_memory_bytes"])


def test_device_check_measures_the_offline_variant():
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh").read_text()
    device_matrix = next(line for line in script.splitlines() if "--variants reference_k0,runtime_eager_k0,runtime_g"
                         in line)
    listed = device_matrix.split("--variants", 1)[1].split()[0].split(",")
    assert "offline_reference" in listed and "offline_runtime_graphs" in listed


def test_offline_inputs_need_no_av_or_mediapipe():
    """The device machine has neither: the offline variant's inputs load there (recorded boxes, OpenCV decode)."""
    import subprocess
    import sys

    from test_imports import BLOCKED, CHILD

    child = CHILD.split("sys.meta_path.insert(0, Refuse())")[0] + "sys.meta_path.insert(0, Refuse())\n" + """
from personalive_trt.bench.offline import sample_offline_inputs
from personalive_trt.runtime.offline_loop import offline_config

reference, clip = sample_offline_inputs(offline_config(resolution=64), None)
assert clip.cond.shape == (60, 256, 256, 3) and clip.faces.shape == (60, 224, 224, 3), clip.faces.shape
assert reference.image.shape == (64, 64, 3) and reference.face.shape == (224, 224, 3), reference.face.shape
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("CLEAN", clip.frames)
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["CLEAN", "60"]
