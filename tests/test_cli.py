"""`personalive-trt run` in file mode: the sample end to end, and every bad input path."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from personalive_trt import StreamConfig
from personalive_trt.filemode.animate import chunked, stream_video
from personalive_trt.cli import app
from personalive_trt.media import VideoReader, probe_video
from personalive_trt.media.sample import sample_driving


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_sample_run_aligns_output_with_input(tmp_path):
    """5 frames (not a multiple of the window): 5 frames out, driving fps, audio kept."""
    out = tmp_path / "out.mp4"
    result = invoke("--reference", "sample", "--driving", "sample", "--output", str(out),
                    "--weights", "synthetic", "--max-frames", "5")
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "NOT a real animation" in result.output
    info = probe_video(out)
    with VideoReader(out) as reader:
        frames = list(reader)
    assert len(frames) == 5 and frames[0].shape == (512, 512, 3)
    assert info.fps == pytest.approx(probe_video(sample_driving()).fps)
    assert info.has_audio
    assert info.duration == pytest.approx(5 / info.fps, abs=0.05)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temp files left


def test_sample_run_output_i_is_the_animation_of_driving_frame_i(tmp_path, monkeypatch):
    """Frame alignment through the whole command (reader, framing, chunking, padding, writer): with the echo
    test double (output = 3/4 driving + 1/4 reference, same stream timing as the model) each written frame is
    nearest to the echo of its own driving frame among all the driving frames (H.264 at default quality:
    mean error of a few levels, against tens between neighbouring frames of the sample)."""
    from personalive_trt.runtime import animator as animate
    from personalive_trt.media import framing
    from personalive_trt.live.testing import EchoAnimator

    opened = []

    def echo_animator(weights, config, **_):
        opened.append(EchoAnimator(config))
        return opened[-1]

    monkeypatch.setattr(animate, "open_animator", echo_animator)
    out = tmp_path / "out.mp4"
    n = 7  # not a multiple of the window: the padded tail is cut
    result = invoke("--reference", "sample", "--driving", "sample", "--output", str(out), "--weights", "synthetic",
                    "--max-frames", str(n), "--no-crop", "--device", "cpu")
    assert result.exit_code == 0, result.output
    reference = opened[0].reference.astype(np.float32)
    with VideoReader(sample_driving(), max_frames=n + 4) as reader:
        driving = [framing.resize_square(frame, 512).astype(np.float32) for frame in reader]
    echoes = [(3 * frame + reference) / 4 for frame in driving]
    with VideoReader(out) as reader:
        written = [frame.astype(np.float32) for frame in reader]
    assert len(written) == n
    for i, frame in enumerate(written):
        errors = [float(np.abs(frame - echo).mean()) for echo in echoes]
        assert int(np.argmin(errors)) == i, (i, [round(e, 1) for e in errors])
        assert errors[i] < 4.0, (i, errors[i])


@pytest.fixture
def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(blank)
    empty_video = tmp_path / "empty.mp4"
    empty_video.write_bytes(b"")
    return {"corrupt": corrupt, "blank": blank, "empty_video": empty_video, "dir": tmp_path}


@pytest.mark.parametrize("case", ["missing_reference", "corrupt_reference", "no_face", "empty_video",
                                  "missing_output_dir", "not_weights", "unknown_synthetic", "fp16_cpu",
                                  "zero_frames"])
def test_bad_input_fails_with_one_line_and_no_output(case, bad_files):
    d = bad_files["dir"]
    out = d / "out.mp4"
    args = {"--reference": "sample", "--driving": "sample", "--output": str(out), "--weights": "synthetic"}
    extra: list[str] = []
    expect: tuple[str, ...]
    if case == "missing_reference":
        args["--reference"] = str(d / "nope.png")
        expect = ("nope.png",)
    elif case == "corrupt_reference":
        args["--reference"] = str(bad_files["corrupt"])
        expect = ("corrupt.png",)
    elif case == "no_face":
        args["--reference"] = str(bad_files["blank"])
        expect = ("blank.png", "--no-crop")
    elif case == "empty_video":
        args["--driving"] = str(bad_files["empty_video"])
        expect = ("empty.mp4",)
    elif case == "missing_output_dir":
        out = d / "missing" / "out.mp4"
        args["--output"] = str(out)
        expect = ("missing",)
    elif case == "not_weights":
        args["--weights"] = str(d)
        expect = (str(d), "not a PersonaLive weights folder")
    elif case == "unknown_synthetic":
        args["--weights"] = "synthetic:huge"
        expect = ("synthetic:huge",)
    elif case == "fp16_cpu":
        extra = ["--dtype", "fp16"]
        expect = ("--dtype fp16",)
    else:
        extra = ["--max-frames", "0"]
        expect = ("--max-frames 0",)
    result = invoke(*[x for kv in args.items() for x in kv], *extra)
    assert_one_line_error(result, *expect)
    assert not out.exists()
    if out.parent.exists():  # nothing half-written, no temp file either
        assert [p.name for p in out.parent.iterdir() if ".mp4" in p.name] == ["empty.mp4"]  # the fixture's


# ---- streaming alignment and step guards (library level, tiny synthetic models) -----------------
def test_chunked_pads_the_tail():
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(6)]
    chunks = list(chunked(iter(frames), 4))
    assert [real for _, real in chunks] == [4, 2]
    assert chunks[1][0][:, 0, 0, 0].tolist() == [4, 5, 5, 5]


class CountingAnimator:
    """Stands in for Animator: returns the chunk it received ``steps - 1`` calls earlier."""

    def __init__(self, config):
        self.config, self.count, self.inputs = config, 0, []

    def step(self, chunk):
        self.inputs.append(chunk)
        self.count += 1
        delay = self.config.steps - 1
        return self.inputs[self.count - 1 - delay] if self.count > delay else np.zeros_like(chunk)


@pytest.mark.parametrize("n", [1, 4, 7, 12])
def test_stream_video_emits_output_i_for_input_i(n):
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(n)]
    emitted: list[int] = []
    count = stream_video(CountingAnimator(StreamConfig()), iter(frames), lambda f: emitted.append(int(f[0, 0, 0])))
    assert count == n and emitted == list(range(n))


def test_base_install_without_onnx_runs_the_torch_path(tmp_path):
    """The base install has no onnx/onnxruntime: the torch pipeline and CLI errors must not need them."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['onnx'] = None\n"
        "sys.modules['onnxruntime'] = None\n"
        "import numpy as np\n"
        "from personalive_trt import Animator, StreamConfig, synthetic_models\n"
        "anim = Animator(synthetic_models('tiny'), StreamConfig())\n"
        "anim.fuse_reference(np.zeros((512, 512, 3), np.uint8))\n"
        "from personalive_trt.cli import app\n"
        f"app(['run', '--reference', {str(tmp_path / 'missing.png')!r}, '--driving', 'sample', '--output', "
        f"{str(tmp_path / 'o.mp4')!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "missing.png" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
