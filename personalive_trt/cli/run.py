"""``personalive-trt run``: a driving video file into an mp4 (file mode), or live (camera, stream, preview)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from personalive_trt.cli import params
from personalive_trt.cli.params import fail, user_errors


def run(
    reference: str = typer.Option(..., "--reference", "-r", help="Portrait image file, or 'sample'."),
    driving: str = typer.Option(..., "--driving", "-d", help="Driving video file or 'sample' (file mode), or a live "
                                "source: webcam[:N], /dev/videoN, rtsp://..., http(s)://..."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .mp4 (H.264). File mode: driving fps, "
                                          "audio kept. Live mode: the frames shown, finalised on Ctrl-C."),
    weights: params.Weights = "auto",
    max_frames: Optional[int] = typer.Option(None, help="Animate only the first N driving frames (live: stop after "
                                             "N output frames)."),
    seed: params.Seed = 42,
    device: params.Device = "auto",
    dtype: params.Dtype = "auto",
    no_crop: params.NoCrop = False,
    backend: params.Backend = "torch",
    engines: params.Engines = None,
    window: params.Window = 4,
    preview: bool = typer.Option(False, "--preview", help="Live: show the output in a window with fps/latency "
                                 "(needs a display and OpenCV with GUI support); q or Esc stops."),
    virtual_camera: bool = typer.Option(False, "--virtual-camera", help="Live: send the output to a virtual webcam "
                                        "(needs the virtual-camera extra: pyvirtualcam)."),
    fps: Optional[float] = typer.Option(None, help="Live: camera frame rate to request, or the playback rate of a "
                                        "file (default: the source's own)."),
    loop: bool = typer.Option(False, "--loop", help="Live: replay a file source until Ctrl-C."),
    reference_loop: bool = typer.Option(False, "--reference-loop", help="Run the plain-PyTorch reference loop "
                                        "(Animator) instead of the streaming runtime (file and live mode)."),
    vae: params.Vae = "full",
    compile_mode: params.Compile = "auto",
    cuda_graphs: params.CudaGraphs = "auto",
    no_self_check: params.NoSelfCheck = False,
    mode: str = typer.Option("stream", "--mode", help="stream: the online loop, as the original's web demo "
                             "runs it; offline: the original's offline script (inference_offline.py) on a driving "
                             "file, see docs/offline-mode.md."),
    side_by_side: Optional[Path] = typer.Option(None, "--side-by-side", help="--mode offline: also write the "
                                                "original's 4-panel video (reference | face crop | driving | "
                                                "generated) to this .mp4."),
    keyframe_limit: Optional[int] = typer.Option(None, "--keyframe-limit", help="--mode offline: the most "
                                                 "reference banks the keyframes append (default 20); frames past "
                                                 "it differ from the original's."),
) -> None:
    """Animate REFERENCE with DRIVING: a video file into OUTPUT, or live (camera, stream, --preview,
    --virtual-camera) until Ctrl-C."""
    from personalive_trt.choices import Mode
    from personalive_trt.live.runner import is_live_request

    # SIGTERM would skip Python's cleanup; turn it into SystemExit so the writer removes (file mode) or
    # finalises (live mode) its file.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    session = dict(reference=reference, driving=driving, output=output, weights=weights, max_frames=max_frames,
                   seed=seed, device=device, dtype=dtype, crop=not no_crop, backend=backend, engines=engines,
                   window=window, vae=vae, compile=compile_mode, reference_loop=reference_loop, cuda_graphs=cuda_graphs,
                   self_check=not no_self_check, side_by_side=side_by_side, keyframe_limit=keyframe_limit)
    try:
        offline = Mode.parse(mode, "--mode") is Mode.OFFLINE
        if offline:
            from personalive_trt.filemode.offline_run import OfflineOptions, animate_offline_file

            stats = animate_offline_file(OfflineOptions(**session, fps=fps, loop=loop, preview=preview,
                                                        virtual_camera=virtual_camera))
    except user_errors() as exc:
        fail(str(exc))
    if offline:
        typer.echo(f"wrote {output} ({stats.frames} frames, {stats.fps:.2f} fps, {stats.backend}, "
                   f"weights: {stats.weights})" + (f"; side by side: {side_by_side}" if side_by_side else ""))
        return
    live = is_live_request(driving, preview, virtual_camera)
    if not live and output is None:
        fail("--output is required for a driving file (or add --preview / --virtual-camera for live mode)")
    if not live and (fps is not None or loop):
        fail("--fps and --loop apply to live mode (a camera or stream, --preview or --virtual-camera); a file "
             "with only --output is animated frame by frame at its own rate")
    try:
        if live:
            from personalive_trt.live.runner import LiveOptions, run_live

            stats = run_live(LiveOptions(**session, preview=preview, virtual_camera=virtual_camera, fps=fps, loop=loop),
                             status=lambda message: typer.echo(message, err=True))
        else:
            from personalive_trt.filemode.animate import RunOptions, animate_file

            stats = animate_file(RunOptions(**session))
    except user_errors() as exc:
        fail(str(exc))
    if live:
        typer.echo(f"live: {stats.summary()}" + (f"; wrote {output}" if output is not None and stats.frames else ""))
    else:
        typer.echo(f"wrote {output} ({stats.frames} frames, {stats.fps:.2f} fps, {stats.backend}, "
                   f"weights: {stats.weights})")
