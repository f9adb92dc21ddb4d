"""Image and video I/O for the command-line pipeline.

Everything here speaks one pixel format: ``HxWx3`` ``uint8`` RGB numpy arrays. Errors a user can cause (a
missing file, a text file passed as a video, an output folder that does not exist) raise :class:`MediaError`
with a one-line message that names the file and says what was expected, so the CLI can print it as is.

Video is decoded and encoded with PyAV (FFmpeg). The writer produces H.264 (libx264, yuv420p) ``.mp4`` files
and never leaves a partial file behind: it writes to a hidden temporary file next to the destination and
renames it into place only when :meth:`VideoWriter.close` succeeds.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class _LazyPyAV:
    """PyAV, imported on first use: images, the runtime and the benchmark must work where PyAV is not
    installed (the GPU check's machine has none); only reading or writing video needs it."""

    def __getattr__(self, name: str):
        import av

        return getattr(av, name)


av = _LazyPyAV()

__all__ = [
    "MediaError",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "check_output_path",
    "probe_video",
    "read_image",
]

# Index (moov) at the front: browsers and players can start playing before the whole file has arrived.
_MP4_OPTIONS = {"movflags": "+faststart"}
# Audio codecs that the mp4 muxer accepts and common players decode; anything else is re-encoded to AAC.
_MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "alac", "ac3", "eac3"})


class MediaError(ValueError):
    """A media file could not be read or written; the message names the file and what was expected."""


# --------------------------------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike, *, like_original: bool = False) -> np.ndarray:
    """Read an image file as an ``HxWx3`` uint8 RGB array, upright.

    * EXIF orientation is applied (phone photos are stored sideways with an orientation tag).
    * Transparent images (RGBA, LA, palette with transparency) are composited over white: dropping the alpha
      channel would expose whatever colour the transparent pixels happen to hold (often black), which looks
      like a black background to the face detector and the model.
    * 16-bit greyscale is scaled to 8 bits instead of being clipped; grey, palette and CMYK become RGB.
    * Animated images (GIF, APNG, WebP) give their first frame.

    ``like_original``: read as the original's offline script does (``Image.open(path).convert("RGB")``), which
    the offline mode reproduces: no EXIF rotation, and the alpha channel dropped, not composited.
    """
    path = Path(path)
    _require_file(path, "an image (PNG, JPEG, WebP, ...)")
    try:
        with Image.open(path) as image:
            image.load()
            if like_original:
                array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
            else:
                array = _pil_to_rgb(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{path}: not a readable image ({_short(exc)}); expected PNG, JPEG, WebP, ...") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data surfaces as any of these
        raise MediaError(f"{path}: corrupt or truncated image ({_short(exc)})") from exc
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise MediaError(f"{path}: image is empty ({array.shape[1]}x{array.shape[0]})")
    return array


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("LA", "La", "PA", "RGBa") or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a video before decoding it.

    ``width``/``height`` are the displayed size (after the container's rotation, if any). ``frame_count`` is
    the count the container declares, or None when it does not say (then :attr:`estimated_frames` guesses
    from duration and fps). ``duration`` is in seconds, None when unknown.
    """

    fps: float
    frame_count: int | None
    width: int
    height: int
    has_audio: bool
    duration: float | None

    @property
    def estimated_frames(self) -> int | None:
        if self.frame_count is not None:
            return self.frame_count
        if self.duration is not None and self.fps > 0:
            return max(1, round(self.duration * self.fps))
        return None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's metadata (MediaError if it is not a readable video with at least one frame).

    Decodes the first frame only: that validates the file and gives the displayed size of rotated videos.
    """
    with VideoReader(path) as reader:
        return reader.info


def _open_input(path: Path) -> av.container.InputContainer:
    _require_file(path, "a video (MP4, MOV, WebM, ...)")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: not a readable video ({_short(exc)}); expected MP4, MOV, WebM, ...") from exc


def _video_stream(path: Path, container) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path}: has no video stream; expected a video file")
    return container.streams.video[0]


def _video_info(path: Path, container, stream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if not (fps > 0 and math.isfinite(fps)):
        raise MediaError(f"{path}: video stream has no usable frame rate")
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    width, height = stream.codec_context.width, stream.codec_context.height
    return VideoInfo(
        fps=fps,
        frame_count=stream.frames if stream.frames and stream.frames > 0 else None,
        width=width,
        height=height,
        has_audio=bool(container.streams.audio),
        duration=duration,
    )


# --------------------------------------------------------------------------------------------------- reading


class VideoReader:
    """Decode a video into ``HxWx3`` uint8 RGB frames, in display order and upright.

    Use as a context manager and iterate::

        with VideoReader("in.mp4", max_frames=100) as reader:
            fps = reader.info.fps
            for frame in reader: ...

    The first frame is decoded in ``__init__`` so that an unreadable file, a file without a video stream or
    a video with no decodable frame fails *before* the caller loads models or opens an output. Frames stored
    sideways with a display-rotation tag (phone recordings) are rotated upright, as players show them.
    ``max_frames`` stops after that many frames (the pipeline's ``--max-frames``).
    """

    def __init__(self, path: str | os.PathLike, max_frames: int | None = None):
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
        self.path = Path(path)
        self.max_frames = max_frames
        self._container = _open_input(self.path)
        self._yielded = 0
        try:
            stream = _video_stream(self.path, self._container)
            stream.thread_type = "AUTO"
            self.info = _video_info(self.path, self._container, stream)
            self._frames = self._container.decode(stream)
            self._pending: np.ndarray | None = self._next_decoded()
            if self._pending is None:
                raise MediaError(f"{self.path}: video has no decodable frames")
            # The displayed size is only certain once a frame (with its rotation) has been decoded.
            height, width = self._pending.shape[:2]
            if (width, height) != (self.info.width, self.info.height):
                self.info = VideoInfo(self.info.fps, self.info.frame_count, width, height,
                                      self.info.has_audio, self.info.duration)
        except BaseException:
            self.close()
            raise

    def _next_decoded(self) -> np.ndarray | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except av.FFmpegError as exc:
            raise MediaError(
                f"{self.path}: video decoding failed after {self._yielded} frames ({_short(exc)})"
            ) from exc
        array = frame.to_ndarray(format="rgb24")
        quarter_turns = round((frame.rotation or 0) / 90) % 4
        if quarter_turns:
            array = np.ascontiguousarray(np.rot90(array, k=quarter_turns))
        return array

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._container is None or (self.max_frames is not None and self._yielded >= self.max_frames):
            raise StopIteration
        if self._pending is not None:
            frame, self._pending = self._pending, None
        else:
            frame = self._next_decoded()
            if frame is None:
                raise StopIteration
        self._yielded += 1
        return frame

    @property
    def frames_read(self) -> int:
        return self._yielded

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------- writing


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate an output video path before any work is done: ``.mp4`` suffix, existing writable folder.

    Called by the CLI up front (and by :class:`VideoWriter`) so that a typo in ``--output`` fails in a second
    instead of after minutes of inference.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() != ".mp4":
        raise MediaError(f"{path}: output must be an .mp4 file (got suffix {path.suffix or 'none'!r})")
    if path.is_dir():
        raise MediaError(f"{path}: output is an existing folder; expected a .mp4 file path")
    folder = path.parent
    if not folder.is_dir():
        raise MediaError(f"{folder}: output folder does not exist (for {path.name}); create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MediaError(f"{folder}: output folder is not writable (for {path.name})")
    return path


class VideoWriter:
    """Encode ``HxWx3`` uint8 RGB frames to an H.264 (libx264, yuv420p) ``.mp4`` at a constant ``fps``.

    ``size`` is ``(width, height)`` (both even: yuv420p halves the chroma resolution). ``crf`` is x264's
    quality knob (18 is visually near-lossless; 23 is x264's default); ``preset`` trades encoding speed for
    file size; ``encoder_options`` are passed to libx264 as extra FFmpeg options (e.g. ``{"threads": "1"}``
    for byte-reproducible output).

    Atomic: frames go to a hidden temporary file in the destination folder, renamed onto ``path`` only when
    :meth:`close` succeeds. An exception inside the ``with`` block, or :meth:`abort`, deletes the temporary
    file, so a crash or Ctrl-C never leaves a truncated video that looks finished. A missing output folder
    raises :class:`MediaError` in ``__init__``, before any frame is produced.

    ``audio_source``: a media file whose first audio track is added to the output, aligned so that the audio
    at the source's first video frame plays with output frame 0, and cut at the written video's duration
    (``frames_written / fps``), so output made from the first N driving frames stays in sync. AAC/MP3/ALAC/AC-3
    tracks are copied packet by packet (no quality loss; the cut falls on an audio packet boundary, ~21 ms for
    AAC); other codecs (PCM, Opus, Vorbis, FLAC, ...) are re-encoded to AAC and cut to the sample. A source
    without audio simply gives a silent output (``audio_written`` stays False).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        size: tuple[int, int],
        audio_source: str | os.PathLike | None = None,
        crf: int = 18,
        preset: str = "medium",
        encoder_options: dict[str, str] | None = None,
    ):
        self.path = check_output_path(path)
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"size must be (width, height) with even positive values for yuv420p, got {size!r}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf}")
        self.audio_source = Path(audio_source) if audio_source is not None else None
        if self.audio_source is not None:
            _require_file(self.audio_source, "a media file to take the audio track from")
        self.fps = float(fps)
        self.size = (width, height)
        self.frames_written = 0
        self.audio_written = False
        self._rate = Fraction(fps).limit_denominator(1001 * 1000)
        self._temps: list[Path] = []
        self._closed = False
        self._video_tmp = self._new_temp()
        try:
            self._container = av.open(str(self._video_tmp), mode="w", format="mp4", options=_MP4_OPTIONS)
            self._stream = self._container.add_stream("libx264", rate=self._rate)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(crf), "preset": preset, **(encoder_options or {})}
            # Tag the colour conversion swscale does (BT.601, limited range) so players do not guess.
            ctx = self._stream.codec_context
            ctx.colorspace, ctx.color_range = 6, 1  # AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG
            ctx.color_primaries, ctx.color_trc = 6, 6
        except BaseException:
            self.abort()
            raise

    def _new_temp(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".partial.mp4", dir=self.path.parent)
        os.close(fd)
        temp = Path(name)
        self._temps.append(temp)
        return temp

    def write(self, frame: np.ndarray) -> None:
        """Encode one ``HxWx3`` uint8 RGB frame (H, W = ``size[1]``, ``size[0]``)."""
        if self._closed:
            raise ValueError(f"{self.path}: write() after close() or abort()")
        width, height = self.size
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (height, width, 3):
            got = (f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}").strip()
            raise ValueError(f"frame must be a uint8 RGB array of shape ({height}, {width}, 3); got {got}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self._rate
        self._container.mux(self._stream.encode(video_frame))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file: flush the encoder, add the audio, rename into place. No-op once closed."""
        if self._closed:
            return
        try:
            if self.frames_written == 0:
                raise MediaError(f"{self.path}: no frames were written; refusing to create an empty video")
            self._container.mux(self._stream.encode(None))
            self._container.close()
            final = self._video_tmp
            if self.audio_source is not None:
                final = self._mux_audio(self._video_tmp)
            os.chmod(final, _new_file_mode())  # mkstemp made it owner-only; give it a normal file's mode
            os.replace(final, self.path)
            self._temps.remove(final)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._remove_temps()

    def abort(self) -> None:
        """Stop without producing ``path``: close the encoder and delete the temporary files."""
        self._closed = True
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - the file is being discarded; its state does not matter
                pass
        self._remove_temps()

    def _remove_temps(self) -> None:
        for temp in self._temps:
            temp.unlink(missing_ok=True)
        self._temps.clear()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):  # a writer dropped without close() must not leave its temporary file behind
        if not getattr(self, "_closed", True):
            self.abort()

    # ---- audio

    def _mux_audio(self, video_path: Path) -> Path:
        """Remux ``video_path`` with the source's audio for [t0, t0 + duration) into a new temp file.

        t0 is the source time of its first video frame (what frame 0 of the output was made from). Returns
        ``video_path`` itself when the source has no audio track.
        """
        source = self.audio_source
        start = _first_video_time(source)
        if start is None:
            return video_path
        end = start + self.frames_written / float(self._rate)
        out_path = self._new_temp()
        try:
            with av.open(str(source), mode="r") as src, av.open(str(video_path), mode="r") as vid, \
                    av.open(str(out_path), mode="w", format="mp4", options=_MP4_OPTIONS) as out:
                audio_in = src.streams.audio[0]
                video_in = vid.streams.video[0]
                video_out = out.add_stream_from_template(video_in)
                if audio_in.codec_context.name in _MP4_AUDIO_CODECS:
                    audio_out = out.add_stream_from_template(audio_in)
                    audio_packets = _copied_audio(src, audio_in, audio_out, start, end)
                else:
                    in_ctx = audio_in.codec_context
                    audio_out = out.add_stream("aac", rate=in_ctx.sample_rate or 48000,
                                               layout=_aac_layout(in_ctx.layout.nb_channels))
                    audio_out.bit_rate = 96_000 * audio_out.codec_context.layout.nb_channels
                    audio_packets = _reencoded_audio(src, audio_in, audio_out, start, end)
                for packet in _interleave(_copied_packets(vid, video_in, video_out), audio_packets):
                    out.mux(packet)
        except av.FFmpegError as exc:
            raise MediaError(f"{source}: could not add its audio track to {self.path.name} ({_short(exc)})") from exc
        self.audio_written = True
        return out_path


def _first_video_time(source: Path) -> float | None:
    """Source time (s) where output frame 0's audio starts; None if ``source`` has no audio track.

    For a video it is the time of its first decoded video frame (the frame a VideoReader yields first; not
    always 0: edit lists and B-frames shift it). For a pure audio file, the audio track's own start.
    """
    try:
        with av.open(str(source), mode="r") as container:
            if not container.streams.audio:
                return None
            if container.streams.video:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    if frame.time is not None:
                        return float(frame.time)
                    break
                if stream.start_time is not None:
                    return float(stream.start_time * stream.time_base)
                return 0.0
            audio = container.streams.audio[0]
            return float(audio.start_time * audio.time_base) if audio.start_time is not None else 0.0
    except av.FFmpegError as exc:
        raise MediaError(f"{source}: cannot read the audio source ({_short(exc)})") from exc


def _new_file_mode() -> int:
    """The mode open() would give a new file under the current umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _aac_layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"  # FFmpeg's AAC encoder: keep it to what every player plays


def _copied_packets(container, stream_in, stream_out):
    for packet in container.demux(stream_in):
        if packet.dts is None and packet.size == 0:
            continue  # the demuxer's end-of-stream flush packet
        packet.stream = stream_out
        yield packet


def _copied_audio(container, stream_in, stream_out, start: float, end: float):
    """Audio packets whose start lies in [start, end), shifted so ``start`` becomes time 0."""
    time_base = stream_in.time_base
    offset = round(start / time_base)
    for packet in container.demux(stream_in):
        if packet.pts is None or (packet.dts is None and packet.size == 0):
            continue
        t = float(packet.pts * time_base)
        if t < start - 1e-6:
            continue
        if t >= end - 1e-6:
            break
        packet.pts -= offset
        if packet.dts is not None:
            packet.dts -= offset
        packet.stream = stream_out
        yield packet


def _reencoded_audio(container, stream_in, stream_out, start: float, end: float):
    """Decode, cut to [start, end) to the sample, re-encode to AAC; yields the encoder's packets."""
    ctx = stream_out.codec_context
    rate = ctx.sample_rate
    resampler = av.AudioResampler(format="fltp", layout=ctx.layout, rate=rate)
    first_sample, last_sample = round(start * rate), round(end * rate)
    position = None  # source sample index (at the output rate) of the next resampled sample
    written = 0
    for frame in container.decode(stream_in):
        for chunk in resampler.resample(frame):
            if position is None:
                position = round(chunk.time * rate) if chunk.time is not None else 0
            samples = chunk.to_ndarray()  # (channels, n) float32 planar
            lo, hi = max(first_sample - position, 0), min(last_sample - position, samples.shape[1])
            position += samples.shape[1]
            if hi > lo:
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, lo:hi]), format="fltp",
                                                   layout=ctx.layout.name)
                piece.sample_rate = rate
                piece.pts = written
                piece.time_base = Fraction(1, rate)
                written += hi - lo
                yield from stream_out.encode(piece)
        if position is not None and position >= last_sample:
            break
    yield from stream_out.encode(None)


def _interleave(video_packets, audio_packets):
    """Merge two packet streams in presentation order so the mp4 is properly interleaved."""
    video, audio = next(video_packets, None), next(audio_packets, None)
    while video is not None or audio is not None:
        if audio is None or (video is not None and _packet_time(video) <= _packet_time(audio)):
            yield video
            video = next(video_packets, None)
        else:
            yield audio
            audio = next(audio_packets, None)


def _packet_time(packet) -> float:
    ts = packet.dts if packet.dts is not None else packet.pts
    return float(ts * packet.time_base) if ts is not None and packet.time_base is not None else 0.0


# --------------------------------------------------------------------------------------------------- helpers


def _require_file(path: Path, expected: str) -> None:
    if not path.exists():
        raise MediaError(f"{path}: file not found; expected {expected}")
    if not path.is_file():
        raise MediaError(f"{path}: is not a file; expected {expected}")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty; expected {expected}")


def _short(exc: BaseException) -> str:
    """First line of an exception message, for one-line user errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
