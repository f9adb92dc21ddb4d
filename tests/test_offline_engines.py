"""The offline mode on built engines: ONNX Runtime against the torch offline loop, the bank capacity the engines
were built for (``build --max-keyframes K``) and the one-line refusal of a clip that would append more banks.

Cheap by construction: the tiny synthetic weights at the parity build's 128 canvas (tests/conftest.py's
``parity_onnx_build``, shared with tests/test_runtime.py), the sample's first 16 frames (7 windows), and the
pose and motion encoders (the pose encoder full size even in the tiny weights) behind test_offline's zero
stand-ins on both sides: what differs between the backends here is the UNets, the VAE and the pose guider.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from conftest import relative_error
from personalive_trt.config import StreamConfig
from personalive_trt.engines.networks import Networks
from personalive_trt.filemode.offline import prepare_driving, prepare_reference
from personalive_trt.filemode.offline_run import engine_bank_config
from personalive_trt.runtime.offline_loop import OfflineAnimator, max_keyframe_banks, offline_config
from test_offline import mesh, with_stand_ins, zero_noise  # noqa: F401 (mesh: the module's FaceMesh fixture)

CANVAS = 128
#: ONNX Runtime against torch, max error over a window's frames relative to their range: the README's stated
#: ONNX Runtime tolerance (tests/test_runtime.py's ORT_TOLERANCE: kernel rounding through the random weights).
ORT_TOLERANCE = 1e-2


def config(limit: int = 3) -> StreamConfig:
    """Every tested window adds (threshold below any distance) from window 2 on: 3 tested keyframes and the
    sticky bank; with the default limit 3 the bank stops there, as the engines (built with 3) hold."""
    return offline_config(keyframe_limit=limit, resolution=CANVAS, keyframe_start=1, keyframe_threshold=-1.0)


@pytest.fixture(scope="module")
def prepared(mesh):  # noqa: F811
    from personalive_trt.bench.session import sample_frames

    reference, frames = sample_frames(256)
    cfg = config()
    return (prepare_reference(reference, mesh, cfg, "sample_reference.png"),
            prepare_driving(frames, mesh, cfg, "sample_driving.mp4", max_frames=16))


WINDOWS = 5  # windows 0-4: the keyframe test adds at 2, 3, 4; windows 3 and 4 read 1 and 2 history banks


def test_onnxruntime_offline_runtime_matches_the_torch_offline_loop(parity_models, parity_onnx_build, prepared):
    """The first 5 windows of the offline mode on the streaming runtime over the built folder's ONNX Runtime
    sessions (opened as `run --mode offline --backend onnxruntime` opens them) against the torch offline loop:
    same banks per window, every window's decoded frames within ORT_TOLERANCE of their range (the runtime
    skips the warm-up windows' decode, so windows 3 and 4 are compared)."""
    from personalive_trt.engines.folder import load_networks
    from personalive_trt.runtime.offline_stream import OfflineStreamRuntime

    cfg = config()
    assert cfg.bank_capacity is None and cfg.keyframe_banks == 3  # the default build's capacity: same engine key
    reference, clip = prepared
    torch_nets, _ = with_stand_ins(Networks.from_models(parity_models, cfg), ("pose_encoder", "motion_encoder"))
    trace: dict = {}
    anim = OfflineAnimator(torch_nets, cfg, noise=zero_noise, trace=trace)
    anim.fuse_reference(reference)
    ort_nets, _ = with_stand_ins(load_networks(parity_onnx_build, "onnxruntime", "synthetic", cfg, "cpu"),
                                 ("pose_encoder", "motion_encoder"))
    runtime = OfflineStreamRuntime(ort_nets, clip.frames, cfg, noise=zero_noise, ring=1)
    runtime.fuse_reference(reference)
    errors, banks = [], []
    for index, indices in enumerate(runtime.windows[:WINDOWS]):
        expected = anim.step_float(clip.window(indices, anim.device, anim.dtype))
        runtime.submit_window(clip, indices)
        output = runtime.collect()
        output.wait()
        banks.append(output.keyframes)
        if index >= cfg.steps - 1:
            errors.append(relative_error(runtime.video, expected))
    assert banks == [0, 0, 0, 1, 2] and [c["num_keyframes"] for c in trace["calls"]] == [0, 0, 1, 2, 3]
    print("offline onnxruntime runtime vs torch loop, relative error per window:",
          ", ".join(f"{e:.1e}" for e in errors))
    assert len(errors) == 2 and max(errors) <= ORT_TOLERANCE, errors


def write_build_json(folder, bank_capacity: int | None = None, resolution: int = CANVAS):
    """A build.json as `build --backend onnxruntime --resolution 128 [--max-keyframes K]` writes it (only the
    record: the offline run reads it before it opens any engine)."""
    from personalive_trt.engines.folder import BuildRecord, write_build

    folder.mkdir(parents=True, exist_ok=True)
    config = StreamConfig(resolution=resolution, bank_capacity=bank_capacity)
    write_build(folder, BuildRecord(weights="synthetic", fingerprint="unused", unet_config={},
                                    configs=[config.as_dict()], precisions=["fp32"], backend="onnxruntime"))
    return folder


def test_engines_hold_the_banks_they_were_built_for(tmp_path):
    """``build --max-keyframes K`` records ``bank_capacity`` K (3: nothing recorded, the default's bytes); the
    offline run opens the engines with their capacity and stops at its own limit; a clip that would append
    more banks than the engines hold is refused in one line naming the banks, the limit and the ways out."""
    from personalive_trt.engines.folder import read_build

    built = write_build_json(tmp_path / "default")
    record = read_build(built)
    assert "bank_capacity" not in record.configs[0]
    cfg = config(limit=20)
    assert record.keyframe_banks(cfg) == 3 and cfg.bank_capacity == 20
    # 16 frames: 7 windows, banks from window 2 on -> at most 5; the limit 20 does not bite, the engines' 3 do.
    assert max_keyframe_banks(16, cfg) == 5
    with pytest.raises(ValueError) as refused:
        engine_bank_config(built, cfg, 16, 20)
    message = str(refused.value)
    assert "\n" not in message
    for fragment in ("16 frames append up to 5 keyframe banks", "--keyframe-limit 20", f"{built} hold 3",
                     "build --max-keyframes 5", "--max-frames"):
        assert fragment in message, (fragment, message)
    # Within the engines' capacity: opened with it (the default build's key), stopping at the run's own limit.
    opened, limit = engine_bank_config(built, config(limit=2), 16, 2)
    assert opened.keyframe_banks == 3 and opened.engine_fields() == dataclasses.replace(opened).engine_fields()
    assert opened.bank_capacity is None and limit == 2
    # A folder built with --max-keyframes 20 serves the whole clip (its build.json records the capacity).
    wide = write_build_json(tmp_path / "wide", bank_capacity=20)
    assert json.loads((wide / "build.json").read_text())["configs"][0]["bank_capacity"] == 20
    opened, limit = engine_bank_config(wide, cfg, 16, 20)
    assert opened.keyframe_banks == 20 and limit == 20


def test_build_max_keyframes_sizes_the_bank_profile():
    """The bank-length profile max is 1 + K, and K enters the engine fields only when it is not the default."""
    from personalive_trt.models.synthetic import CONFIGS
    from personalive_trt.models.weights import build_module
    from personalive_trt.engines.networks import specs_by_role
    from personalive_trt.shapes import StreamShapes

    unet_config = build_module("denoising_unet", CONFIGS["tiny"]).config
    default, wide = StreamConfig(resolution=64), StreamConfig(resolution=64, bank_capacity=20)
    assert StreamConfig(resolution=64, bank_capacity=3) == default and "bank_capacity" not in default.engine_fields()
    assert wide.engine_fields() == default.engine_fields() | {"bank_capacity": 20}
    assert wide.online_keyframes == 3 and StreamConfig(bank_capacity=1).online_keyframes == 1
    for cfg, length in ((default, 4), (wide, 21)):
        shapes = StreamShapes.from_unet_config(cfg, unet_config)
        unet = specs_by_role(shapes)["denoising_unet"]
        banks = [t for t in unet.inputs if len(t.max_shape) == 3 and t.max_shape != t.min_shape]
        assert banks and all(t.max_shape[1] == length * t.min_shape[1] for t in banks), [t.name for t in banks]
    with pytest.raises(ValueError, match="bank_capacity must be an integer >= 0"):
        StreamConfig(bank_capacity=-1)


def test_build_cli_refuses_max_keyframes_for_torch():
    from typer.testing import CliRunner

    from personalive_trt.cli import app
    from test_cli import assert_one_line_error

    assert_one_line_error(CliRunner().invoke(app, ["build", "--backend", "torch", "--compile", "--max-keyframes", "5"]),
                          "--max-keyframes sizes the engines of --backend tensorrt/onnxruntime")


def test_tensorrt_offline_refuses_before_opening(tmp_path, monkeypatch, request):
    """``run --mode offline --backend tensorrt`` (tests/tensorrt_stub stands in for the module) on a folder built
    with the default 3 banks: the sample's 40 frames (13 windows) append up to 4, so the run is refused in one
    line from the build record alone, before any network opens, and nothing is written."""
    from typer.testing import CliRunner

    from personalive_trt.cli import app
    from personalive_trt.runtime import animator
    from test_cli import assert_one_line_error
    from test_engines import load_stub

    load_stub(10, monkeypatch)
    request.addfinalizer(lambda: sys.modules.pop("tensorrt", None))  # as test_tensorrt_glue's fixture
    monkeypatch.setattr(animator, "open_session_networks",
                        lambda *a, **k: pytest.fail("networks opened before the bank check"))
    # The stand-in executes on the host (EXECUTES_ON_HOST), so the run is on the CPU: skip the device check
    # that refuses the CPU for the real library.
    monkeypatch.setattr(animator, "resolve_device", lambda device, dtype, backend: (torch.device("cpu"), torch.float32))
    out = tmp_path / "out" / "o.mp4"
    out.parent.mkdir()  # (the engines folder is only a build record: the refusal comes before any engine)
    result = CliRunner().invoke(app, ["run", "--mode", "offline", "--reference", "sample", "--driving", "sample",
                                      "--weights", "synthetic", "--reference-loop", "--backend", "tensorrt",
                                      "--engines", str(write_build_json(tmp_path / "engines", resolution=512)),
                                      "--max-frames", "40",
                                      "--output", str(out)])
    assert_one_line_error(result, "40 frames append up to 4 keyframe banks (--keyframe-limit 20), but the engines in")
    assert "build --max-keyframes 4" in result.output and list(out.parent.iterdir()) == []
