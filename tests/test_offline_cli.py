"""`personalive-trt run --mode offline`: the sample end to end on tiny synthetic weights (one run, 16 frames, with
the side-by-side video), and every option the mode refuses, each in one line before anything loads."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from test_cli import assert_one_line_error
from personalive_trt.cli import app
from personalive_trt.filemode.offline_run import OfflineOptions
from personalive_trt.filemode.panels import PADDING, PANEL, panel_grid
from personalive_trt.media import VideoReader, probe_video, read_image
from personalive_trt.media.facemesh import FaceMesh
from personalive_trt.media.sample import sample_driving, sample_reference

CANVAS = 128
OFFLINE = ("--mode", "offline", "--reference", "sample", "--driving", "sample", "--weights", "synthetic")


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def read_all(path) -> list[np.ndarray]:
    with VideoReader(path) as reader:
        return list(reader)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One run: the sample's first 18 frames -> N = 16 (a multiple of 4), 7 windows on tiny weights. What this
    checks is the command around the loop (inputs, frame count, writers, panels; the loop's numbers are
    tests/test_offline.py's), so it runs cheaply: a 128 canvas (the CLI has no option for it), and the pose and
    motion encoders (the pose encoder full size even in the tiny weights) and the denoising UNet (2/3 of what is left) answer
    zeros (test_offline's stand-ins; the frames still differ by window: the pile holds each chunk's own noise).
    At 512 with the real networks the run costs ~300 CPU-s."""
    from personalive_trt.runtime import animator
    from test_offline import with_stand_ins

    def open_with_stand_ins(*args, **kwargs):
        return with_stand_ins(opened(*args, **kwargs), ("pose_encoder", "motion_encoder", "denoising_unet"))[0]

    folder = tmp_path_factory.mktemp("offline")
    out, side = folder / "out.mp4", folder / "side.mp4"
    opened = animator.open_session_networks
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(OfflineOptions.__init__.__kwdefaults__, "resolution", CANVAS)  # the default canvas
        patch.setattr(animator, "open_session_networks", open_with_stand_ins)
        result = invoke(*OFFLINE, "--output", str(out), "--reference-loop", "--max-frames", "18",
                        "--side-by-side", str(side))
    assert result.exit_code == 0, result.output
    return folder, out, side, result.output


def test_offline_run_writes_exactly_n_frames_at_the_driving_fps_with_its_audio(offline_run):
    folder, out, side, output = offline_run
    assert "SYNTHETIC" in output and "offline reference loop" in output and "(16 frames" in output
    info, driving = probe_video(out), probe_video(sample_driving())
    frames = read_all(out)
    assert len(frames) == 16 and frames[0].shape == (CANVAS, CANVAS, 3)
    assert info.fps == pytest.approx(driving.fps)
    assert info.has_audio and info.duration == pytest.approx(16 / info.fps, abs=0.05)
    assert sorted(p.name for p in folder.iterdir()) == ["out.mp4", "side.mp4"]  # no temporary files left


def test_offline_runtime_is_the_default_loop(tmp_path):
    """Without --reference-loop the offline mode runs on the streaming runtime's offline variant (same
    stand-ins and canvas as ``offline_run``; the numbers are tests/test_offline_stream.py's): N frames out."""
    from personalive_trt.runtime import animator
    from test_offline import with_stand_ins

    opened, checked = animator.open_session_networks, animator.open_checked
    starts = []
    out = tmp_path / "out.mp4"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(OfflineOptions.__init__.__kwdefaults__, "resolution", CANVAS)
        patch.setattr(animator, "open_session_networks", lambda *a, **k: with_stand_ins(
            opened(*a, **k), ("pose_encoder", "motion_encoder", "denoising_unet"))[0])
        patch.setattr(animator, "open_checked", lambda *a, **k: starts.append((k, checked(*a, **k))) or starts[-1][1])
        result = invoke(*OFFLINE, "--output", str(out), "--max-frames", "16")
    assert result.exit_code == 0, result.output
    # opened through the self-check (on the CPU's eager default there is nothing to check: no graphs, no compile)
    (options, start), = starts
    assert options["check"] is True and start.checks == [] and start.runtime.description.startswith("offline")
    assert "offline stream runtime (eager)" in result.output and "(16 frames" in result.output
    assert len(read_all(out)) == 16 and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_compile_on_asks_for_the_offline_runtime_compiled(tmp_path, monkeypatch):
    """``--compile on`` without --reference-loop is not refused: the clip is prepared, then the offline runtime is
    opened through the self-check with a compile step, asked for explicitly (what the offline runtime does with
    compiled networks is tests/test_offline_stream.py's, with a stand-in compile); stopped there, nothing is
    written."""
    from personalive_trt.runtime import animator, compile as compile_module
    from personalive_trt.runtime.offline_stream import OfflineStreamRuntime

    class Opened(Exception):
        pass

    seen: list[dict] = []

    def opened(networks, config, **kwargs):
        seen.append(kwargs)
        raise Opened()

    for module in (animator, compile_module):  # a C++ compiler: not the point here
        monkeypatch.setattr(module, "require_compiler", lambda device: None)
    monkeypatch.setitem(OfflineOptions.__init__.__kwdefaults__, "resolution", CANVAS)
    monkeypatch.setattr(animator, "open_checked", opened)
    result = invoke(*OFFLINE, "--output", str(tmp_path / "out.mp4"), "--max-frames", "16", "--compile", "on")
    assert isinstance(result.exception, Opened), result.output
    (options,) = seen
    assert callable(options["compile"]) and options["explicit"] == {"compile": "--compile on"}
    assert options["runtime"] is OfflineStreamRuntime and options["check"] is True
    assert list(tmp_path.iterdir()) == []


def test_offline_runtime_opens_through_the_self_check(tmp_path, monkeypatch):
    """--mode offline opens its runtime as the stream does, through the start-up self-check (the fallback itself on
    the offline runtime is tests/test_offline_stream.py's), and honours --no-self-check; a check that stops the
    start is one line, exit 1, nothing written."""
    from personalive_trt.runtime import animator
    from personalive_trt.runtime.offline_stream import OfflineStreamRuntime
    from personalive_trt.runtime.self_check import SelfCheckError

    seen: list[dict] = []

    def stopping(networks, config, **kwargs):
        seen.append(kwargs)
        raise SelfCheckError("self-check failed: stand-in; not starting")

    monkeypatch.setitem(OfflineOptions.__init__.__kwdefaults__, "resolution", CANVAS)
    monkeypatch.setattr(animator, "open_checked", stopping)
    out = tmp_path / "out.mp4"
    assert_one_line_error(invoke(*OFFLINE, "--output", str(out), "--max-frames", "16", "--no-self-check"),
                          "self-check failed: stand-in; not starting")
    assert len(seen) == 1 and seen[0]["check"] is False  # the check itself: test_offline_runtime_is_the_default_loop
    assert seen[0]["runtime"] is OfflineStreamRuntime and seen[0]["frames"] == 16 and seen[0]["graphs"] is None
    assert not list(tmp_path.iterdir())


def test_side_by_side_video_shows_reference_face_crop_driving_and_generated_frames(offline_run):
    """16 frames of 4 panels (2058x516: 512 panels, make_grid's 2-pixel border); frames 0 and 15 against the
    panel row rebuilt here from its sources: the reference, driving frame i's FaceMesh crop, driving frame i and
    output frame i. Tolerances: two H.264 encodings apart, a mean of a few levels for the pictures, up to ~12
    for the generated panel (tiny synthetic weights make noise, which H.264 keeps poorly at 128 px), while a
    panel from the wrong source (the panel on its left) is 75+ levels off and the other frame's output ~57."""
    _, out, side, _ = offline_run
    panels, generated = read_all(side), read_all(out)
    width = 4 * (PANEL + PADDING) + PADDING
    assert len(panels) == 16 and panels[0].shape == (PANEL + 2 * PADDING, width, 3)
    reference = read_image(sample_reference(), like_original=True)
    cells = [np.s_[PADDING:PADDING + PANEL, PADDING + k * (PANEL + PADDING):(k + 1) * (PANEL + PADDING)]
             for k in range(4)]
    with VideoReader(sample_driving(), max_frames=16) as reader, FaceMesh() as mesh:
        driving = {index: frame for index, frame in enumerate(reader) if index in (0, 15)}
        for index, other in ((0, 15), (15, 0)):
            frame = driving[index]
            expected = panel_grid([reference, mesh.find(frame).cut(frame), frame, generated[index]])
            got = panels[index].astype(np.int16)
            errors = [np.abs(got[cell] - expected[cell]).mean() for cell in cells]
            assert max(errors[:3]) < 4 and errors[3] < 20, (index, errors)
            for k in (1, 2, 3):  # the order of the panels, not only their content
                assert np.abs(got[cells[k]] - expected[cells[k - 1]]).mean() > 4 * errors[k], (index, k)
            wrong_frame = panel_grid([generated[other]])[cells[0]]
            assert np.abs(got[cells[3]] - wrong_frame).mean() > 3 * errors[3], index  # output i beside driving i
            assert got[:, :PADDING].max() < 40 and got[:PADDING].max() < 40  # the black border


@pytest.mark.parametrize("args, fragments", [
    (("--reference-loop", "--window", "8"), ("--window 8", "window of 4")),
    (("--reference-loop", "--no-crop"), ("--no-crop", "FaceMesh")),
    (("--reference-loop", "--fps", "25"), ("--fps and --loop", "live mode")),
    (("--reference-loop", "--loop"), ("--fps and --loop", "live mode")),
    (("--reference-loop", "--preview"), ("--preview", "live mode's")),
    (("--reference-loop", "--compile", "on"), ("--compile on",)),
    (("--reference-loop", "--keyframe-limit", "-1"), ("--keyframe-limit -1",)),
    (("--reference-loop", "--max-frames", "14"), ("sample_driving.mp4: 14 frames (capped at --max-frames 14)", "at least 16")),
])
def test_offline_mode_refuses_in_one_line_and_writes_nothing(tmp_path, args, fragments):
    out = tmp_path / "out.mp4"
    result = invoke(*OFFLINE, "--output", str(out), *args)
    assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_offline_only_options_and_live_sources_are_refused_in_one_line(tmp_path):
    out = tmp_path / "out.mp4"
    assert_one_line_error(invoke(*OFFLINE[:-4], "--driving", "webcam", "--output", str(out), "--reference-loop"),
                          "'webcam' is a live source")
    assert_one_line_error(invoke(*OFFLINE, "--reference-loop"), "--output is required")
    assert_one_line_error(invoke(*OFFLINE, "--output", str(out), "--reference-loop", "--side-by-side", str(out)),
                          "the same file as --output")
    assert_one_line_error(invoke("--reference", "sample", "--driving", "sample", "--output", str(out),
                                 "--side-by-side", str(tmp_path / "s.mp4"), "--keyframe-limit", "3"),
                          "--side-by-side and --keyframe-limit: only with --mode offline")
    assert_one_line_error(invoke(*OFFLINE[2:], "--mode", "online", "--output", str(out)),
                          "--mode 'online': expected one of stream, offline")
    assert list(tmp_path.iterdir()) == []



def test_keyframe_limit_sizes_the_bank_and_the_options_resolve_before_anything_loads():
    """``--keyframe-limit`` is the bank limit of the run's configuration (default 20) while the keyframe test
    keeps the original's 3 tested keyframes; the other fields are the original's (window 4, the 512 canvas),
    and nothing but the choices is resolved by the check."""
    given = OfflineOptions(reference="sample", driving="sample", output="o.mp4", reference_loop=True,
                           weights="synthetic", device="cpu", keyframe_limit=5).check()
    default = OfflineOptions(reference="sample", driving="sample", output="o.mp4", reference_loop=True,
                             weights="synthetic", device="cpu").check()
    assert given.config.keyframe_banks == 5 and default.config.keyframe_banks == 20
    assert given.config.max_keyframes == default.config.max_keyframes == 3
    assert default.config.window == 4 and default.config.resolution == 512 and str(default.device) == "cpu"
