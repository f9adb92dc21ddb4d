"""``run --mode offline``: the original's offline script (``inference_offline.py``) from files to files.

:class:`OfflineOptions` holds the run's choices and refuses, in one line and before anything loads, every option
that has no meaning here (``--window`` other than 4, ``--no-crop``, a live source, ``--fps``/``--loop``/
``--preview``/``--virtual-camera``). The loop is the streaming runtime's offline variant
(:class:`~personalive_trt.runtime.offline_stream.OfflineStreamRuntime`, any backend) unless ``--reference-loop``
asks for :class:`~personalive_trt.runtime.offline_loop.OfflineAnimator`. :func:`animate_offline_file` reads and
prepares the whole clip (every faceless frame listed in one error) and, on ONNX Runtime / TensorRT, checks that
the engines hold the keyframe banks the clip can append (:func:`engine_bank_config`), all before any network
opens; then it writes exactly N frames at the driving video's fps with its audio, and ``--side-by-side`` the
original's 4-panel video (:mod:`.panels`). Both files go through a temporary file and a rename: an error leaves
neither.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from personalive_trt.choices import Backend
from personalive_trt.config import StreamConfig
from personalive_trt.filemode.animate import RunOptions, RunStats
from personalive_trt.filemode.offline import animate_offline, prepare_driving, prepare_reference
from personalive_trt.filemode.panels import SidePanels
from personalive_trt.runtime.offline_loop import (DEFAULT_KEYFRAME_LIMIT, OfflineAnimator, max_keyframe_banks,
                                                  offline_config)
from personalive_trt.runtime.offline_stream import OfflineStreamRuntime

__all__ = ["OfflineOptions", "animate_offline_file", "engine_bank_config"]


@dataclass(frozen=True, kw_only=True)
class OfflineOptions(RunOptions):
    """``run --mode offline``. The live-mode options are carried only so that :meth:`check_mode` can refuse
    them by name (a silently ignored option would be a surprise)."""

    output: Path | None = None  # required; None is refused in one line by check_mode
    fps: float | None = None
    loop: bool = False
    preview: bool = False
    virtual_camera: bool = False

    @property
    def bank_limit(self) -> int:
        return DEFAULT_KEYFRAME_LIMIT if self.keyframe_limit is None else self.keyframe_limit

    def config(self) -> StreamConfig:
        return offline_config(self.bank_limit, window=self.window, resolution=self.resolution, vae=self.vae)

    def check_mode(self) -> None:
        from personalive_trt.live.runner import is_live_request

        if is_live_request(self.driving, self.preview, self.virtual_camera):
            given = [name for name, value in (("--preview", self.preview), ("--virtual-camera", self.virtual_camera))
                     if value]
            raise ValueError(f"--mode offline animates a driving video file into --output; {' and '.join(given)} "
                             "is live mode's" if given else
                             f"--mode offline animates a driving video file; {self.driving!r} is a live source")
        if self.fps is not None or self.loop:
            raise ValueError("--fps and --loop apply to live mode; --mode offline writes every frame at the "
                             "driving video's own fps")
        if self.window != 4:
            raise ValueError(f"--window {self.window}: --mode offline runs the original's window of 4")
        if not self.crop:
            raise ValueError("--no-crop: --mode offline always crops the face with FaceMesh and feeds the whole "
                             "frame to the pose encoder, as the original's offline script")
        if self.bank_limit < 0:
            raise ValueError(f"--keyframe-limit {self.bank_limit}: expected 0 or more reference banks")
        if self.output is None:
            raise ValueError("--output is required with --mode offline")
        if self.side_by_side is not None and Path(self.side_by_side).resolve() == Path(self.output).resolve():
            raise ValueError(f"--side-by-side {self.side_by_side}: the same file as --output")


def engine_bank_config(engines: Path | None, config: StreamConfig, frames: int,
                       keyframe_limit: int) -> tuple[StreamConfig, int]:
    """The configuration to open built engines with for an N-frame offline run, and the run's keyframe limit.

    The engines hold the history banks they were built for (``build --max-keyframes K``, default 3), and the
    run appends up to :func:`max_keyframe_banks` of them; more than K is refused here in one line, before any
    network opens. Otherwise the run opens the engines with their own bank capacity and stops at
    ``min(keyframe_limit, K)`` banks (which is at least what the clip can append)."""
    from personalive_trt.engines.folder import DEFAULT_ENGINES_DIR, read_build

    folder = Path(engines or DEFAULT_ENGINES_DIR)
    built = read_build(folder).keyframe_banks(config)
    if built is None:  # no engines for this window/canvas/decoder: load_networks names what the folder holds
        return config, keyframe_limit
    needed = max_keyframe_banks(frames, config)
    if needed > built:
        raise ValueError(f"--mode offline: {frames} frames append up to {needed} keyframe banks (--keyframe-limit "
                         f"{keyframe_limit}), but the engines in {folder} hold {built}; rebuild them with "
                         f"`personalive-trt build --max-keyframes {needed} --engines {folder}` or lower "
                         "--keyframe-limit or --max-frames")
    return dataclasses.replace(config, bank_capacity=built), min(keyframe_limit, built)


def animate_offline_file(options: OfflineOptions, progress: bool = True) -> RunStats:
    """Animate ``options.reference`` with ``options.driving`` as the original's offline script does; write
    exactly N frames (the driving frame count capped at ``--max-frames``, rounded down to a multiple of 4)."""
    from contextlib import nullcontext

    from tqdm import tqdm

    from personalive_trt import media
    from personalive_trt.media import sample
    from personalive_trt.media.facemesh import FaceMesh
    from personalive_trt.runtime.animator import open_checked_runtime, open_session_networks

    # Everything that can be wrong with the inputs is found before any network loads.
    animation = options.check()
    config = animation.config
    output = media.check_output_path(options.output)
    side_path = media.check_output_path(options.side_by_side) if options.side_by_side is not None else None
    reference_path = sample.resolve_media(options.reference, "reference")
    driving_path = sample.resolve_media(options.driving, "driving")
    info = media.probe_video(driving_path)
    reference_image = media.read_image(reference_path, like_original=True)
    with FaceMesh() as mesh:
        reference = prepare_reference(reference_image, mesh, config, str(reference_path))
        with media.VideoReader(driving_path) as reader:  # prepare_driving stops at --max-frames
            clip = prepare_driving(reader, mesh, config, str(driving_path), max_frames=options.max_frames)

    o = animation.options
    keyframe_limit = options.bank_limit
    if o.backend is not Backend.TORCH:
        config, keyframe_limit = engine_bank_config(o.engines, config, clip.frames, keyframe_limit)
    if o.reference_loop:
        networks = open_session_networks(animation.weights, o.backend, o.engines, animation.device, animation.dtype,
                                         config, o.animator_loop, o.compile)
        animator = OfflineAnimator(networks, config, seed=o.seed, keyframe_limit=keyframe_limit)
    else:  # its bank slots sized for this clip (or a one-line MemoryError when they would not fit), self-checked
        animator = open_checked_runtime(animation.weights, o.backend, o.engines, animation.device, animation.dtype,
                                        config, o.compile, o.cuda_graphs, o.self_check, runtime=OfflineStreamRuntime,
                                        frames=clip.frames, keyframe_limit=keyframe_limit, seed=o.seed)
    animator.fuse_reference(reference)
    resolution = config.resolution
    start = time.perf_counter()
    written, side_written = 0, False
    # An error inside a writer's `with` aborts it (its temporary file deleted). The side-by-side writer closes
    # first: its failure aborts the main output too, and a failure closing the main output removes the
    # finished side-by-side video, so an error leaves neither file.
    try:
        with media.VideoWriter(output, fps=info.fps, size=(resolution, resolution),
                               audio_source=driving_path if info.has_audio else None) as writer:
            with (SidePanels(side_path, reference_image, clip.crops, driving_path, info.fps)
                  if side_path is not None else nullcontext()) as panels, \
                    tqdm(total=clip.frames, unit="frame", desc="animating (offline)", disable=not progress) as bar:
                for video in animate_offline(animator, clip):
                    for frame in video:
                        writer.write(frame)
                        if panels is not None:
                            panels.write(frame)
                    written += len(video)
                    bar.update(len(video))
                if written != clip.frames:  # animate_offline's contract: never pass a miscount as finished
                    raise RuntimeError(f"--mode offline produced {written} frames, expected {clip.frames}")
            side_written = side_path is not None
    except BaseException:
        if side_written:
            side_path.unlink(missing_ok=True)
        raise
    return RunStats(frames=written, seconds=time.perf_counter() - start, weights=animation.weights,
                    backend=animator.description)
