"""Media I/O: image reading, video decoding, atomic H.264 writing with audio, the built-in samples."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_REFERENCE
from personalive_trt.media import (
    MediaError,
    VideoReader,
    VideoWriter,
    check_output_path,
    probe_video,
    read_image,
)
from personalive_trt.media.sample import resolve_media, sample_driving, sample_reference

av = pytest.importorskip("av")  # the GPU machine has no PyAV: these tests skip there

DEMO_VIDEO = SHARED_REFERENCE / "media" / "driving_video.mp4"


def gradient_image(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth, asymmetric RGB test image (smooth so lossy codecs reproduce it closely)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
                    axis=-1).astype(np.uint8)


def make_video(path: Path, frames: int = 50, fps: int = 25, size: tuple[int, int] = (64, 48), fmt: str = "mp4",
               audio_codec: str | None = "aac", audio_rate: int = 48000, video_start: float = 0.0,
               tone: tuple[float, float] | None = None, rotation: int | None = None) -> None:
    """A test video; audio (if any) covers 3 s from t=0, silent except a 1 kHz tone over ``tone`` = (t0, t1)."""
    with av.open(str(path), mode="w", format=fmt) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        if rotation is not None:
            video.set_display_rotation(rotation)
        audio = container.add_stream(audio_codec, rate=audio_rate, layout="mono") if audio_codec else None
        base = gradient_image(size[1], size[0])
        offset = round(video_start * fps)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            frame.pts, frame.time_base = offset + i, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            t = np.arange(3 * audio_rate) / audio_rate
            signal = np.zeros_like(t)
            if tone is not None:
                on = (t >= tone[0]) & (t < tone[1])
                signal[on] = 0.5 * np.sin(2 * np.pi * 1000 * t[on])
            sample_format = audio.codec_context.format.name
            for start in range(0, t.size, 1024):
                chunk = signal[start:start + 1024]
                if sample_format.startswith("s16"):
                    data = (chunk * 32767).astype(np.int16)[None]
                else:
                    data = chunk.astype(np.float32)[None]
                piece = av.AudioFrame.from_ndarray(data, format=sample_format, layout="mono")
                piece.sample_rate, piece.pts, piece.time_base = audio_rate, start, Fraction(1, audio_rate)
                container.mux(audio.encode(piece))
            container.mux(audio.encode(None))


def decoded_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float audio of a file's first audio track and its sample rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().reshape(frame.layout.nb_channels, -1)[0] if frame.format.is_planar
                  else frame.to_ndarray().reshape(-1, frame.layout.nb_channels)[:, 0]
                  for frame in container.decode(stream)]
        return np.concatenate(chunks).astype(np.float64), stream.codec_context.sample_rate


def stream_summary(path: Path) -> dict:
    with av.open(str(path)) as container:
        out = {"video_frames": sum(1 for _ in container.decode(video=0))}
        video = container.streams.video[0]
        out["video_duration"] = float(video.duration * video.time_base)
        out["fps"] = float(video.average_rate)
        out["size"] = (video.codec_context.width, video.codec_context.height)
        out["codec"] = video.codec_context.name
        out["pix_fmt"] = video.codec_context.pix_fmt
        audio = container.streams.audio
        out["audio_codec"] = audio[0].codec_context.name if audio else None
    if out["audio_codec"]:
        samples, rate = decoded_audio(path)
        out["audio_duration"] = samples.size / rate
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------------- images


def test_read_png_exact(tmp_path):
    image = gradient_image()
    Image.fromarray(image).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, image)


def test_read_jpeg(tmp_path):
    image = gradient_image()
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - image).mean() < 3.0


def test_read_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 10, 20, 255)  # opaque red half
    rgba[:, 4:] = (0, 0, 0, 0)        # fully transparent half (black underneath)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[:, :4], np.broadcast_to([200, 10, 20], (8, 4, 3)))
    np.testing.assert_array_equal(out[:, 4:], 255)


def test_read_grey_palette_and_16bit(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)

    Image.fromarray(gradient_image()).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (48, 64, 3)

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(deep).save(tmp_path / "d.png")  # uint16 -> 16-bit greyscale PNG
    out = read_image(tmp_path / "d.png")
    expected = np.rint(deep / 65535 * 255)
    assert np.abs(out[:, :, 0].astype(int) - expected).max() <= 1  # scaled, not clipped to white


def test_read_applies_exif_orientation(tmp_path):
    image = gradient_image(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (64, 48, 3)
    expected = np.rot90(image, k=-1)
    assert np.abs(out.astype(int) - expected).mean() < 3.0


def test_read_like_original_drops_alpha_and_keeps_stored_orientation(tmp_path):
    """The offline mode reads the reference as the original's script does: PIL convert("RGB")."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 10, 20, 255)
    rgba[:, 4:] = (30, 40, 50, 0)  # transparent: its stored colour shows, no white compositing
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", like_original=True), rgba[:, :, :3])
    image = gradient_image(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "r.jpg", like_original=True).shape == (48, 64, 3)  # not rotated


@pytest.mark.parametrize("content", [b"hello, this is not an image\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b""])
def test_read_image_rejects_non_images(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(MediaError, match="bad.png"):
        read_image(path)


def test_read_image_truncated_file(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(MediaError, match="cut.jpg"):
        read_image(path)


def test_read_image_missing(tmp_path):
    with pytest.raises(MediaError, match="nope.png.*not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(MediaError, match="not a file"):
        read_image(tmp_path)


# --------------------------------------------------------------------------------------------------- reading


def test_sample_files_exist_and_are_small():
    reference, driving = sample_reference(), sample_driving()
    assert reference.suffix == ".png" and driving.suffix == ".mp4"
    assert driving.stat().st_size < 1_000_000
    assert read_image(reference).shape == (512, 512, 3)
    assert (reference.parent / "ATTRIBUTION.txt").is_file()


def test_reader_on_sample():
    info = probe_video(sample_driving())
    assert info.fps == pytest.approx(25.0)
    assert (info.width, info.height) == (512, 512)
    assert info.has_audio
    assert 2.0 <= info.duration <= 3.0
    with VideoReader(sample_driving()) as reader:
        frames = list(reader)
    assert len(frames) == info.frame_count == reader.frames_read
    assert all(f.shape == (512, 512, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[len(frames) // 4])  # the head moves
    with VideoReader(sample_driving(), max_frames=7) as reader:
        assert sum(1 for _ in reader) == 7


@pytest.mark.skipif(not DEMO_VIDEO.is_file(), reason=f"{DEMO_VIDEO} not present")
def test_reader_on_demo_video():
    info = probe_video(DEMO_VIDEO)
    assert info.fps == pytest.approx(41025 / 1643, rel=1e-6)
    assert info.frame_count == 1641 and not info.has_audio
    with VideoReader(DEMO_VIDEO, max_frames=5) as reader:
        frames = list(reader)
    assert len(frames) == 5 and frames[0].shape == (512, 512, 3)


def test_reader_applies_display_rotation(tmp_path):
    path = tmp_path / "phone.mp4"
    make_video(path, frames=3, size=(64, 32), audio_codec=None, rotation=-90)  # -90 = shown turned clockwise
    info = probe_video(path)
    assert (info.width, info.height) == (32, 64)
    with VideoReader(path) as reader:
        first = next(reader)
    expected = np.rot90(gradient_image(32, 64), k=-1)
    assert first.shape == (64, 32, 3)
    assert np.abs(first.astype(int) - expected).mean() < 4.0


@pytest.mark.parametrize("content", [b"", b"not a video at all\n" * 10, np.random.default_rng(0).bytes(4096)])
def test_reader_rejects_garbage(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError, match="bad.mp4"):
        VideoReader(path)
    with pytest.raises(MediaError, match="bad.mp4"):
        probe_video(path)


def test_reader_rejects_truncated_and_audio_only(tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(sample_driving().read_bytes()[:20_000])  # the index (moov) is at the end: lost
    with pytest.raises(MediaError, match="cut.mp4"):
        VideoReader(cut)
    wav = tmp_path / "sound.wav"
    with av.open(str(wav), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(MediaError, match="sound.wav.*no video stream"):
        VideoReader(wav)
    with pytest.raises(MediaError, match="missing.mp4"):
        VideoReader(tmp_path / "missing.mp4")


# --------------------------------------------------------------------------------------------------- writing


def test_writer_round_trip_with_audio(tmp_path):
    out = tmp_path / "out.mp4"
    frames = [np.roll(gradient_image(64, 96), 3 * i, axis=1) for i in range(30)]
    with VideoWriter(out, fps=25, size=(96, 64), audio_source=sample_driving()) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.audio_written and writer.frames_written == 30
    summary = stream_summary(out)
    assert summary["video_frames"] == 30
    assert summary["size"] == (96, 64) and summary["codec"] == "h264" and summary["pix_fmt"] == "yuv420p"
    assert summary["fps"] == pytest.approx(25.0)
    assert summary["video_duration"] == pytest.approx(1.2, abs=1e-6)
    assert summary["audio_codec"] == "aac"
    assert abs(summary["audio_duration"] - 30 / 25) <= 1 / 25  # trimmed to the video, within one frame
    with VideoReader(out) as reader:
        back = list(reader)
    errors = [np.abs(a.astype(int) - b).mean() for a, b in zip(back, frames)]
    assert max(errors) < 4.0, errors  # crf 18; the rolled gradient has one hard edge and 4:2:0 chroma
    assert leftovers(tmp_path) == ["out.mp4"]
    assert (out.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_writer_ntsc_fps_and_silent_source(tmp_path):
    src = tmp_path / "silent.mp4"
    make_video(src, frames=10, audio_codec=None)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=30000 / 1001, size=(64, 48), audio_source=src) as writer:
        for _ in range(12):
            writer.write(gradient_image())
    assert not writer.audio_written
    info = probe_video(out)
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-6)
    assert info.frame_count == 12 and not info.has_audio


@pytest.mark.parametrize("fmt, codec, suffix", [("mp4", "aac", "mp4"), ("matroska", "pcm_s16le", "mkv")])
def test_writer_audio_starts_at_first_video_frame(tmp_path, fmt, codec, suffix):
    """Audio of the source at its first video frame plays with output frame 0 (copied AAC and re-encoded PCM)."""
    src = tmp_path / f"src.{suffix}"
    # Video starts at 0.4 s, the tone at 1.0 s: in the output the tone must start at 0.6 s.
    make_video(src, frames=50, fmt=fmt, audio_codec=codec, video_start=0.4, tone=(1.0, 1.5))
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=25, size=(64, 48), audio_source=src) as writer:
        for _ in range(25):  # 1.0 s of video: covers 0.4..1.4 s of the source
            writer.write(gradient_image())
    samples, rate = decoded_audio(out)
    onset = np.flatnonzero(np.abs(samples) > 0.1)[0] / rate
    assert onset == pytest.approx(0.6, abs=0.03)
    assert abs(samples.size / rate - 1.0) <= 1 / 25


def test_writer_is_atomic_on_exception(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, fps=25, size=(64, 48)) as writer:
            for _ in range(5):
                writer.write(gradient_image())
            assert len(leftovers(tmp_path)) == 1 and not out.exists()  # only the hidden temp file
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_writer_failure_keeps_previous_output(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, fps=25, size=(64, 48)) as writer:
            writer.write(gradient_image())
            raise KeyboardInterrupt
    assert out.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == ["out.mp4"]


def test_writer_abort_and_empty_close(tmp_path):
    writer = VideoWriter(tmp_path / "a.mp4", fps=25, size=(64, 48))
    writer.write(gradient_image())
    writer.abort()
    assert leftovers(tmp_path) == []
    writer = VideoWriter(tmp_path / "b.mp4", fps=25, size=(64, 48))
    with pytest.raises(MediaError, match="b.mp4.*no frames"):
        writer.close()
    assert leftovers(tmp_path) == []


def test_writer_missing_folder_fails_before_work(tmp_path):
    with pytest.raises(MediaError, match="nowhere.*does not exist"):
        VideoWriter(tmp_path / "nowhere" / "out.mp4", fps=25, size=(64, 48))
    assert leftovers(tmp_path) == []
    with pytest.raises(MediaError, match="gone.wav.*not found"):
        VideoWriter(tmp_path / "out.mp4", fps=25, size=(64, 48), audio_source=tmp_path / "gone.wav")
    assert leftovers(tmp_path) == []


def test_writer_rejects_bad_frames_and_sizes(tmp_path):
    with VideoWriter(tmp_path / "out.mp4", fps=25, size=(64, 48)) as writer:
        with pytest.raises(ValueError, match=r"uint8 RGB array of shape \(48, 64, 3\)"):
            writer.write(np.zeros((64, 48, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((48, 64, 3), np.float32))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((48, 64), np.uint8))
        writer.write(gradient_image())
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", fps=25, size=(63, 48))
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "z.mp4", fps=0, size=(64, 48))
    assert leftovers(tmp_path) == ["out.mp4"]


def test_check_output_path(tmp_path):
    assert check_output_path(tmp_path / "x.MP4") == tmp_path / "x.MP4"
    with pytest.raises(MediaError, match=r"x.avi.*\.mp4"):
        check_output_path(tmp_path / "x.avi")
    with pytest.raises(MediaError, match="missing.*does not exist"):
        check_output_path(tmp_path / "missing" / "x.mp4")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(MediaError, match="existing folder"):
        check_output_path(tmp_path / "dir.mp4")


# --------------------------------------------------------------------------------------------------- samples


def test_resolve_media(tmp_path, monkeypatch):
    assert resolve_media("sample", "reference") == sample_reference()
    assert resolve_media("sample", "driving") == sample_driving()
    image = tmp_path / "me.png"
    Image.fromarray(gradient_image()).save(image)
    assert resolve_media(str(image), "reference") == image
    with pytest.raises(MediaError, match="nothere.mp4"):
        resolve_media(str(tmp_path / "nothere.mp4"), "driving")
    with pytest.raises(ValueError):
        resolve_media("sample", "audio")
    monkeypatch.chdir(tmp_path)  # a user's own file named "sample" wins over the built-in one
    (tmp_path / "sample").write_bytes(b"x")
    assert resolve_media("sample", "driving") == Path("sample")
