"""``bench --mode offline``: the original's offline loop (``run --mode offline``) timed per frame on the stream
mode's clip.

What runs is what ``run --mode offline`` runs: by default the streaming runtime's offline variant
(:class:`~personalive_trt.runtime.offline_stream.OfflineStreamRuntime`, torch backend; CUDA graphs on CUDA unless
``--no-graph``; ``--compile`` as for ``run``, see docs/offline-mode.md), its bank slots sized for the clip;
``--reference-loop`` times :class:`~personalive_trt.runtime.offline_loop.OfflineAnimator` (eager, plain PyTorch)
instead. The bank limit is ``run``'s default (``--keyframe-limit`` 20).

Same inputs as the stream mode: the built-in sample portrait and the sample driving clip (every frame, decoded
with OpenCV as :func:`~personalive_trt.bench.session.sample_frames` does), the same weights, device, dtype,
canvas and decoder. They are prepared as the offline mode prepares them (:mod:`personalive_trt.filemode.offline`:
whole frames for the pose path, FaceMesh crops for the motion path, the whole reference, PIL resizes), except
that the FaceMesh boxes come from :data:`CROPS_JSON`: MediaPipe is not installed on the device machine, and the
boxes only decide where the faces are cut, not what the networks cost. ``python -m
personalive_trt.bench.offline --record`` rewrites the file with FaceMesh; tests/test_bench_offline.py checks it
against FaceMesh where MediaPipe is installed.

Protocol:

1. **prepare**: decode and prepare the clip (N = its frames capped at ``--max-frames``, rounded down to a
   multiple of 4) -> ``prepare_s``; **setup**: load the networks and build the loop (the runtime's graphs are
   captured, its networks compiled, here) -> ``setup_s``.
2. **cold pass**: ``fuse_reference`` (``reference_fusion_cold_ms``) and the first ``--warmup`` windows of the
   clip, discarded.
3. **measured passes** (``--calls``, default 1): each fuses the reference (``reference_fusion_ms``, the last
   pass's) and runs every window of the clip, N / 4 + 3 of them (the mirrored tail's 3 included), one at a
   time, timing each window (``step_ms``: the window's inputs to the device, the networks, its frames on the
   host; on CUDA, events around it on the loop's stream (the runtime's own, or the current one for the
   reference loop, which returns host frames); ``perf_counter`` on CPU). The three warm-up windows' frames are
   dropped (the runtime skips their decode) and the keyframe windows re-run the reference UNet, so the windows
   differ: ``per_frame_ms`` = the pass's summed window times / N (the mean over passes), what one output frame
   of this clip costs; ``fps`` = 1000 / ``per_frame_ms``.

The stream mode's ``per_frame_ms`` is its step mean / window, so the two reports' ``per_frame_ms`` compare
directly: their ratio (offline / stream) is what the offline mode costs per frame on this clip. It depends on N
(the warm-up windows are spread over N / 4 windows of output) and on the keyframe banks the clip appends
(``keyframe_banks``, at most ``--keyframe-limit``'s default 20; each widens the reference attention).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from personalive_trt.bench.options import BenchError, BenchOptions, report_identity, resolve_device_dtype
from personalive_trt.bench.timing import Clock, memory_report, percentiles

#: The FaceMesh boxes of the sample portrait and of every frame of the sample clip (OpenCV decode).
CROPS_JSON = Path(__file__).with_name("sample_facemesh.json")


def offline_stream_config(options: BenchOptions):
    """The offline run's configuration at the options' canvas and decoder (bank limit: ``run``'s default)."""
    from personalive_trt.runtime.offline_loop import offline_config

    return offline_config(resolution=options.resolution, vae=options.vae)


def record_sample_crops(path: Path = CROPS_JSON) -> dict:
    """Run FaceMesh on the sample portrait and clip; write their boxes to ``path`` (needs MediaPipe)."""
    from personalive_trt import media
    from personalive_trt.bench.session import sample_frames
    from personalive_trt.media import sample
    from personalive_trt.media.facemesh import FaceMesh

    reference = media.read_image(sample.sample_reference(), like_original=True)
    _, frames = sample_frames(None)
    with FaceMesh() as mesh:
        crops = [mesh.find(image) for image in (reference, *frames)]
    missing = [index for index, crop in enumerate(crops) if crop is None]
    if missing:
        raise BenchError(f"FaceMesh found no face in sample image(s) {missing} (0: the portrait)")
    doc = {"about": "FaceMesh boxes of the sample portrait (reference) and of each frame of the sample clip "
                    "(frames, OpenCV decode); written by python -m personalive_trt.bench.offline --record",
           "reference": _crop_fields(crops[0]), "frames": [_crop_fields(crop) for crop in crops[1:]]}
    lines = [f" {json.dumps(key)}: {json.dumps(doc[key])}," for key in ("about", "reference")]
    lines += [' "frames": [', ",\n".join(f"  {json.dumps(fields)}" for fields in doc["frames"]), " ]"]
    path.write_text("{\n" + "\n".join(lines) + "\n}\n")  # one box a line: a diff shows which frame moved
    return doc


def _crop_fields(crop) -> dict:
    return {"box_raw": [int(v) for v in crop.box_raw], "box": [float(v) for v in crop.box]}


class RecordedMesh:
    """Stands in for :class:`~personalive_trt.media.facemesh.FaceMesh`: :meth:`find` answers the recorded boxes
    in order (the crops carry no landmarks: only their boxes are used to cut). Finding more images than were
    recorded is an error, never a made-up box."""

    def __init__(self, boxes: list[dict], what: str) -> None:
        self.boxes, self.what, self.found = boxes, what, 0

    def find(self, image):
        import numpy as np

        from personalive_trt.media.facemesh import FaceMeshCrop

        if self.found >= len(self.boxes):
            raise BenchError(f"{CROPS_JSON}: {len(self.boxes)} recorded box(es) for {self.what}, asked for more")
        fields = self.boxes[self.found]
        self.found += 1
        return FaceMeshCrop(landmarks=np.zeros((0, 3), np.float32), box_raw=tuple(fields["box_raw"]),
                            box=tuple(fields["box"]))


def sample_offline_inputs(config, max_frames: int | None):
    """The sample portrait and clip prepared as ``run --mode offline`` prepares them, with the recorded boxes."""
    from personalive_trt import media
    from personalive_trt.bench.session import sample_frames
    from personalive_trt.filemode.offline import prepare_driving, prepare_reference
    from personalive_trt.media import sample

    try:
        recorded = json.loads(CROPS_JSON.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{CROPS_JSON}: cannot read the sample's FaceMesh boxes ({exc})") from exc
    reference = media.read_image(sample.sample_reference(), like_original=True)
    _, frames = sample_frames(None)
    if len(frames) != len(recorded["frames"]):
        raise BenchError(f"{CROPS_JSON}: {len(recorded['frames'])} recorded boxes, the sample clip decodes to "
                         f"{len(frames)} frames; re-record with python -m personalive_trt.bench.offline --record")
    prepared = prepare_reference(reference, RecordedMesh([recorded["reference"]], "the portrait"), config,
                                 "sample reference")
    clip = prepare_driving(frames, RecordedMesh(recorded["frames"], "the clip"), config, "sample driving clip",
                           max_frames=max_frames)
    return prepared, clip


def open_offline_networks(models, config, compile_mode: str, reference_loop: bool):
    """The torch networks the measured loop runs: compiled as ``run``'s ``--compile`` decides for that loop."""
    from personalive_trt.choices import Backend, Loop
    from personalive_trt.runtime.open import open_networks

    return open_networks(Backend.TORCH, config=config, models=models, compile=compile_mode,
                         loop=Loop.REFERENCE if reference_loop else Loop.RUNTIME)


def open_loop(networks, config, frames: int, seed: int, reference_loop: bool, graphs: bool | None):
    """The loop measured, as ``run --mode offline`` opens it: the offline runtime sized for an N-frame clip
    (``graphs``: None = CUDA graphs where they run), or the offline reference loop with ``reference_loop``."""
    from personalive_trt.runtime.offline_loop import OfflineAnimator
    from personalive_trt.runtime.offline_stream import OfflineStreamRuntime

    if reference_loop:
        return OfflineAnimator(networks, config, seed=seed)
    return OfflineStreamRuntime(networks, frames, config, seed=seed, graphs=graphs)


def loop_clock(loop, device) -> Clock:
    """Device time on the loop's stream (the runtime's own; the current one for the reference loop)."""
    return Clock(device, getattr(loop, "stream", None))


def run_offline_benchmark(options: BenchOptions, log: Callable[[str], None]) -> dict:
    """The offline mode's report (module docstring); written to ``--json`` by the caller."""
    import torch

    from personalive_trt.models.weights import load_models, resolve_weights

    device, dtype = resolve_device_dtype(options)
    config = offline_stream_config(options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    reference, clip = sample_offline_inputs(config, options.max_frames)
    prepare_s = time.perf_counter() - start

    start = time.perf_counter()
    weights = resolve_weights(options.weights)
    log(f"bench: loading {weights} on {device} ({str(dtype).removeprefix('torch.')})")
    models = load_models(weights, device=device, dtype=dtype, vae=config.vae)
    networks = open_offline_networks(models, config, options.compile, options.reference_loop)
    loop = open_loop(networks, config, clip.frames, options.seed, options.reference_loop,
                     None if options.graphs else False)
    clock = loop_clock(loop, device)
    clock.sync()
    setup_s = time.perf_counter() - start
    log(f"bench: {loop.description}, {clip.frames} frames, setup {setup_s:.1f} s")
    with torch.no_grad():
        figures = measure_offline(loop, reference, clip, options.warmup, options.calls, clock, log)
    return {
        **report_identity(options, "offline", device, loop.description),
        "loop": "reference" if options.reference_loop else "runtime",
        "graphs": bool(getattr(loop, "use_graphs", False)),  # the reference loop runs eagerly
        "compile": loop.compile_report() if hasattr(loop, "compile_report") else None,
        "weights": weights,
        "dtype": str(loop.dtype).removeprefix("torch."),
        "vae": config.vae,
        "config": {"vae": config.vae, "window": config.window, "steps": config.steps, "resolution": config.resolution,
                   "keyframe_threshold": config.keyframe_threshold, "keyframe_start": config.keyframe_start,
                   "keyframe_limit": config.keyframe_banks},
        "prepare_s": round(prepare_s, 3),
        "setup_s": round(setup_s, 3),
        **figures,
        "memory": memory_report(device),
    }


def measure_offline(loop, reference, clip, warmup: int, passes: int, clock: Clock,
                    log: Callable[[str], None], between: Callable[[], None] | None = None) -> dict:
    """The cold pass and ``passes`` measured passes of ``loop`` (an :func:`open_loop`) over ``clip`` (module
    docstring); the report's figures. ``between``, when given, runs after each measured window, untimed
    (``benchmarks/offline_ratio.py`` interleaves the stream mode's calls there)."""
    from personalive_trt.bench.session import fuse_timed
    from personalive_trt.runtime.offline_loop import OfflineAnimator, window_frames

    windows = window_frames(clip.frames, loop.config)
    reference_loop = isinstance(loop, OfflineAnimator)

    def run_window(frames) -> int:
        """One window; the history banks it attended to (the reference loop appends at the end of a window,
        the runtime at the start of the next: both read a bank from the window after the one that took it)."""
        if reference_loop:
            banks = len(loop.keyframe_banks)
            loop.step(clip.window(frames, loop.device, loop.dtype))
            return banks
        loop.submit_window(clip, frames)  # one window in flight: its frames waited for on the host
        output = loop.collect()
        output.wait()
        return output.keyframes

    cold_fusion_ms = fuse_timed(loop, reference, clock)
    for frames in windows[:warmup]:
        run_window(frames)
    clock.sync()
    step_ms, pass_ms = [], []
    for index in range(passes):
        log(f"bench: offline pass {index + 1}/{passes}: {len(windows)} windows")
        fusion_ms = fuse_timed(loop, reference, clock)
        pass_steps = []
        for frames in windows:
            begin = clock.mark()
            banks = run_window(frames)
            pass_steps.append(clock.ms(begin, clock.mark()))
            if between is not None:
                between()
        step_ms += pass_steps
        pass_ms.append(sum(pass_steps))
    per_frame = sum(pass_ms) / len(pass_ms) / clip.frames
    return {
        "frames": clip.frames,
        "windows": len(windows),
        "warmup_windows": min(warmup, len(windows)),
        "measured_passes": passes,
        "reference_fusion_cold_ms": round(cold_fusion_ms, 3),
        "reference_fusion_ms": round(fusion_ms, 3),
        "step_ms": percentiles(step_ms),
        "step_clock": "cuda_events_around_window" if clock.cuda else "perf_counter",
        "pass_ms": [round(ms, 3) for ms in pass_ms],
        "per_frame_ms": round(per_frame, 3),
        "fps": round(1e3 / per_frame, 6),
        "keyframe_banks": banks,  # history banks the clip's last window attended to (at most the limit)
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m personalive_trt.bench.offline --record``: rewrite :data:`CROPS_JSON` with FaceMesh."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--record"]:
        print("usage: python -m personalive_trt.bench.offline --record", file=sys.stderr)
        return 2
    doc = record_sample_crops()
    print(f"wrote {CROPS_JSON}: the portrait and {len(doc['frames'])} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
