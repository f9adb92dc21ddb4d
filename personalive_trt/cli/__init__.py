"""The ``personalive-trt`` command line. Each command parses, validates and calls one library function."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from personalive_trt.config import COMPILE_HELP, VAE_HELP

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="PersonaLive real-time portrait animation: run, build engines, manage weights.")
weights_app = typer.Typer(no_args_is_help=True, help="Check or download the released weights.")
app.add_typer(weights_app, name="weights")


def fail(message: str) -> None:
    """One line on stderr, exit code 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (printed as one line); anything else keeps its traceback."""
    from personalive_trt.engines.folder import BuildError
    from personalive_trt.engines import EngineError, TensorRTNotAvailableError
    from personalive_trt.export.interface import ExportError
    from personalive_trt.media import MediaError
    from personalive_trt.runtime.reference_loop import NonFiniteError
    from personalive_trt.runtime.compile import CompileError
    from personalive_trt.models.weights import WeightsError

    return (MediaError, WeightsError, NonFiniteError, BuildError, EngineError, ExportError, TensorRTNotAvailableError,
            CompileError, ValueError, FileNotFoundError)


@app.command()
def run(
    reference: str = typer.Option(..., "--reference", "-r", help="Portrait image file, or 'sample'."),
    driving: str = typer.Option(..., "--driving", "-d", help="Driving video file or 'sample' (file mode), or a live "
                                "source: webcam[:N], /dev/videoN, rtsp://..., http(s)://..."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .mp4 (H.264). File mode: driving fps, "
                                          "audio kept. Live mode: the frames shown, finalised on Ctrl-C."),
    weights: str = typer.Option(
        "auto", help="Weights folder, 'synthetic' (small, CPU-fast) or 'synthetic:full'. "
        "'auto': ./pretrained_weights if present, else synthetic."),
    max_frames: Optional[int] = typer.Option(None, help="Animate only the first N driving frames (live: stop after "
                                             "N output frames)."),
    seed: int = typer.Option(42, help="Seed of the diffusion noise."),
    device: str = typer.Option("auto", help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on a GPU, fp32 on the CPU), fp32 or fp16 (fp16 needs cuda)."),
    no_crop: bool = typer.Option(False, "--no-crop", help="Resize whole frames instead of framing the face."),
    backend: str = typer.Option("torch", help="torch (PyTorch modules), onnxruntime or tensorrt (built by "
                                "`personalive-trt build`)."),
    engines: Optional[Path] = typer.Option(None, help="Engines folder of `build` (default ./engines_cache)."),
    window: int = typer.Option(4, help="Frames per chunk (the engines must be built for it)."),
    preview: bool = typer.Option(False, "--preview", help="Live: show the output in a window with fps/latency "
                                 "(needs a display and OpenCV with GUI support); q or Esc stops."),
    virtual_camera: bool = typer.Option(False, "--virtual-camera", help="Live: send the output to a virtual webcam "
                                        "(needs the virtual-camera extra: pyvirtualcam)."),
    fps: Optional[float] = typer.Option(None, help="Live: camera frame rate to request, or the playback rate of a "
                                        "file (default: the source's own)."),
    loop: bool = typer.Option(False, "--loop", help="Live: replay a file source until Ctrl-C."),
    reference_loop: bool = typer.Option(False, "--reference-loop", help="Run the plain-PyTorch reference loop "
                                        "(Animator) instead of the streaming runtime (file and live mode)."),
    vae: str = typer.Option("full", "--vae", help=VAE_HELP),
    compile_mode: str = typer.Option("auto", "--compile", help=COMPILE_HELP),
) -> None:
    """Animate REFERENCE with DRIVING: a video file into OUTPUT, or live (camera, stream, --preview,
    --virtual-camera) until Ctrl-C."""
    from personalive_trt.live.runner import is_live_request

    # SIGTERM would skip Python's cleanup; turn it into SystemExit so the writer removes (file mode) or
    # finalises (live mode) its file.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if is_live_request(driving, preview, virtual_camera):
        _run_live(reference, driving, output, weights, max_frames, seed, device, dtype, no_crop, backend, engines,
                  window, preview, virtual_camera, fps, loop, vae=vae, reference_loop=reference_loop,
                  compile_mode=compile_mode)
        return
    if output is None:
        fail("--output is required for a driving file (or add --preview / --virtual-camera for live mode)")
    if fps is not None or loop:
        fail("--fps and --loop apply to live mode (a camera or stream, --preview or --virtual-camera); a file "
             "with only --output is animated frame by frame at its own rate")
    from personalive_trt.filemode.animate import RunOptions, animate_file

    options = RunOptions(reference=reference, driving=driving, output=output, weights=weights,
                         max_frames=max_frames, seed=seed, device=device, dtype=dtype, crop=not no_crop,
                         backend=backend, engines=engines, window=window, vae=vae,
                         loop="reference" if reference_loop else "runtime", compile=compile_mode)
    try:
        stats = animate_file(options)
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(f"wrote {output} ({stats.frames} frames, {stats.fps:.2f} fps, {stats.backend}, weights: {stats.weights})")


def _run_live(reference, driving, output, weights, max_frames, seed, device, dtype, no_crop, backend, engines,
              window, preview, virtual_camera, fps, loop, vae="full", reference_loop=False,
              compile_mode="auto") -> None:
    from personalive_trt.live.runner import LiveOptions, run_live

    if backend not in ("torch", "onnxruntime", "tensorrt"):
        fail(f"--backend {backend!r}: expected torch, onnxruntime or tensorrt")
    options = LiveOptions(reference=reference, driving=driving, output=output, preview=preview,
                          virtual_camera=virtual_camera, weights=weights, max_frames=max_frames, seed=seed,
                          device=device, dtype=dtype, crop=not no_crop, backend=backend, engines=engines,
                          window=window, fps=fps, loop=loop, vae=vae, reference_loop=reference_loop,
                          compile=compile_mode)
    try:
        stats = run_live(options, status=lambda message: typer.echo(message, err=True))
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(f"live: {stats.summary()}" + (f"; wrote {output}" if output is not None and stats.frames else ""))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind. Anything but loopback exposes the camera "
                             "stream to the network (a warning is printed)."),
    port: int = typer.Option(7860, help="TCP port."),
    weights: str = typer.Option("auto", help="Weights folder, 'synthetic' or 'synthetic:full' ('auto': "
                                "./pretrained_weights if present, else synthetic)."),
    backend: str = typer.Option("torch", help="torch, onnxruntime or tensorrt (built by `personalive-trt build`)."),
    engines: Optional[Path] = typer.Option(None, help="Engines folder of `build` (default ./engines_cache)."),
    device: str = typer.Option("auto", help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on a GPU, fp32 on the CPU), fp32 or fp16 (fp16 needs cuda)."),
    seed: int = typer.Option(42, help="Seed of the diffusion noise."),
    window: int = typer.Option(4, help="Frames per chunk (the engines must be built for it)."),
    no_crop: bool = typer.Option(False, "--no-crop", help="Resize whole frames instead of framing the face."),
    max_sessions: int = typer.Option(1, help="Animations at once (one animator each); others are told 'busy'."),
    max_upload_mb: float = typer.Option(10.0, help="Largest reference upload, MiB."),
    max_message_kb: int = typer.Option(2048, help="Largest WebSocket message (one driving JPEG), KiB."),
    vae: str = typer.Option("full", "--vae", help=VAE_HELP),
    idle_timeout: float = typer.Option(60.0, help="Close a connection that sends no driving frame for this many "
                                       "seconds (frees its slot); 0: never."),
    ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve: animator replicas on many GPUs/machines "
                             "(needs the cluster extra). --max-sessions is then per replica."),
    replicas: Optional[int] = typer.Option(None, help="--ray: fixed number of animator replicas (default 1)."),
    min_replicas: Optional[int] = typer.Option(None, help="--ray: autoscale on live sessions from this many..."),
    max_replicas: Optional[int] = typer.Option(None, help="--ray: ...to this many replicas."),
    gpus_per_replica: float = typer.Option(0.0, help="--ray: GPUs each replica reserves (fractions share a GPU)."),
    cpus_per_replica: float = typer.Option(1.0, help="--ray: CPUs each replica reserves (fractions allowed)."),
    address: Optional[str] = typer.Option(None, help="--ray: join this Ray cluster (e.g. ray://head:10001 or "
                                          "auto); default: start a local Ray and stop it on exit."),
    drain_timeout: float = typer.Option(3600.0, help="--ray: seconds a replica being scaled down keeps its live "
                                        "sessions before it is stopped anyway."),
    compile_mode: str = typer.Option("auto", "--compile", help=COMPILE_HELP),
) -> None:
    """Serve the live web page: upload a portrait, animate it with your camera in the browser."""
    try:
        import uvicorn

        from personalive_trt.web.app import ServeSettings, create_app
    except ImportError as exc:
        fail(f"serve needs the web extra ({exc.name} is missing): pip install 'personalive-trt[serve]'")
    from personalive_trt.filemode.animate import open_animator, resolve_weights
    from personalive_trt.devices import resolve_device
    from personalive_trt.config import StreamConfig

    if not 0 < port < 65536:
        fail(f"--port {port}: expected 1..65535")
    if max_sessions < 1 or max_upload_mb <= 0 or max_message_kb <= 0:
        fail("--max-sessions, --max-upload-mb and --max-message-kb must be positive")
    if backend not in ("torch", "onnxruntime", "tensorrt"):
        fail(f"--backend {backend!r}: expected torch, onnxruntime or tensorrt")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: binding {host}: anyone who can reach this address can use the camera page and "
                    "the GPU; there is no authentication. Bind 127.0.0.1 unless you mean it.", err=True,
                    fg=typer.colors.YELLOW)
    if idle_timeout < 0:
        fail(f"--idle-timeout {idle_timeout}: expected >= 0 seconds")
    settings = ServeSettings(max_sessions=max_sessions, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             max_message_bytes=max_message_kb * 1024, crop=not no_crop, idle_timeout=idle_timeout)
    cluster_flags = (replicas, min_replicas, max_replicas, address)
    if not ray and (any(v is not None for v in cluster_flags) or gpus_per_replica or cpus_per_replica != 1.0
                    or drain_timeout != 3600.0):
        fail("--replicas, --min-replicas, --max-replicas, --gpus-per-replica, --cpus-per-replica, --address and "
             "--drain-timeout need --ray")
    if ray:
        from personalive_trt.web.cluster import ClusterOptions

        try:
            options = ClusterOptions(replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                                     gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                                     address=address, drain_timeout=drain_timeout)
            from personalive_trt.web.ray_app import DeployError, serve_forever
        except ValueError as exc:
            fail(str(exc))
        except ImportError as exc:
            fail(f"serve --ray needs the cluster extra ({exc.name} is missing): pip install 'personalive-trt[cluster]'")
        resolved = resolve_weights(weights)
        resolved = str(Path(resolved).resolve()) if Path(resolved).is_dir() else resolved  # same path on every node
        engines_dir = engines.resolve() if engines is not None else None
        config = StreamConfig(window=window, vae=vae)

        def animator():  # runs on each replica: its device is resolved there, where its GPU is
            replica_device, replica_dtype = resolve_device(device, dtype, backend)
            return open_animator(resolved, backend=backend, engines=engines_dir, device=replica_device,
                                 dtype=replica_dtype, seed=seed, config=config, compile=compile_mode)

        try:
            serve_forever(animator, settings, options, config.resolution, host, port,
                          status=lambda message: typer.echo(message, err=True))
        except DeployError as exc:
            fail(str(exc))
        return
    try:
        if backend == "tensorrt":
            from personalive_trt.engines import require_tensorrt

            require_tensorrt()
        torch_device, torch_dtype = resolve_device(device, dtype, backend)
        resolved = resolve_weights(weights)
        config = StreamConfig(window=window, vae=vae)
        web_app = create_app(lambda: open_animator(resolved, backend=backend, engines=engines, device=torch_device,
                                                   dtype=torch_dtype, seed=seed, config=config,
                                                   compile=compile_mode), settings)
    except user_errors() as exc:
        fail(str(exc))
    from personalive_trt.devices import describe

    typer.echo(f"serving on http://{'[' + host + ']' if ':' in host else host}:{port} with {backend} on "
               f"{describe(torch_device, torch_dtype)}  (Ctrl-C stops)", err=True)
    uvicorn.run(web_app, host=host, port=port, ws_max_size=settings.max_message_bytes, log_level="info")


@app.command()
def build(
    weights: str = typer.Option("auto", help="Weights folder, 'synthetic', 'synthetic:small' or 'synthetic:full' "
                                "('auto': ./pretrained_weights if present, else synthetic)."),
    backend: str = typer.Option("tensorrt", help="tensorrt (ONNX + fp16 engines), onnxruntime (ONNX only) or torch "
                                "(with --compile: fill the compile cache)."),
    window: list[int] = typer.Option([4], help="Window size(s) to export the denoising UNet for (repeatable)."),
    engines: Path = typer.Option(Path("engines_cache"), help="Output folder (ONNX, engines, manifests)."),
    precision: Optional[str] = typer.Option(None, help="fp16 or fp32 (default: fp16 for tensorrt, fp32 for "
                                            "onnxruntime)."),
    override: list[str] = typer.Option([], help="Per-network precision, e.g. pose_encoder=fp32 (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Re-export and rebuild everything."),
    vae: str = typer.Option("full", "--vae", help=VAE_HELP + " The engines folder is built for this one."),
    skip_memory_check: bool = typer.Option(False, "--skip-memory-check",
                                           help="Start even when the estimated peak memory exceeds what this "
                                           "process may use (the kernel may then kill the build)."),
    compile_flag: bool = typer.Option(False, "--compile", help="With --backend torch: compile every window's "
                                      "networks on this machine's default device into ENGINES/torch_compile, so "
                                      "that `run`/`serve`/`bench --compile auto` start warm."),
) -> None:
    """Export every network to verified ONNX and build the engines `run --backend` uses."""
    from personalive_trt.filemode.animate import resolve_weights

    if compile_flag != (backend == "torch"):
        fail("--compile goes with --backend torch (it fills the compile cache; torch has no engines to build)")
    if compile_flag:
        from personalive_trt.build.compile_cache import warm_cache

        try:
            reports = warm_cache(resolve_weights(weights), engines, windows=window, vae=vae)
        except user_errors() as exc:
            fail(str(exc))
        for w, report in zip(window, reports):
            typer.echo(f"window {w}: compile cache {report['cache']} in {report['folder']}, {report['total']:.1f} s "
                       f"({', '.join(f'{role} {s:.1f}' for role, s in report['per_network'].items())})")
        return
    from personalive_trt.build.driver import build as build_all

    overrides = {}
    for item in override:
        name, sep, value = item.partition("=")
        if not sep or value not in ("fp16", "fp32"):
            fail(f"--override {item!r}: expected NETWORK=fp16|fp32")
        overrides[name] = value
    try:
        record = build_all(resolve_weights(weights), engines, backend=backend, windows=window, vae=vae, precision=precision,
                           precision_overrides=overrides, force=force, memory_check=not skip_memory_check)
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(f"engines ready in {engines} ({record.backend}, {', '.join(record.precisions)}, "
               f"weights: {record.weights})")


@weights_app.command("check")
def weights_check(directory: Path = typer.Argument(..., help="Weights folder in the released layout.")) -> None:
    """Validate every file of a weights folder: a table per component, exit 1 on any problem."""
    from personalive_trt.models.weights import WeightsError, check_weights_dir

    try:
        reports = check_weights_dir(directory)
    except WeightsError as exc:
        fail(str(exc))
    width = max(len(f.path) for r in reports for f in r.files) if any(r.files for r in reports) else 20
    for report in reports:
        typer.echo(f"\n{report.name}: {report.absent or ('ok' if report.ok else 'PROBLEMS')}")
        if report.absent:
            continue
        typer.echo(f"  {'file':<{width}}  {'tensors':>7}  {'parameters':>13}  {'dtype':<9}  status")
        for f in report.files:
            typer.echo(f"  {f.path:<{width}}  {f.tensors:>7}  {f.parameters:>13,}  {f.dtypes:<9}  {f.status}")
        for problem in report.problems:
            typer.echo(f"  ! {problem}")
    bad = [r.name for r in reports if not r.ok]
    if bad:
        fail(f"{directory}: problems in {', '.join(bad)}")
    absent = [r.name for r in reports if r.absent]
    typer.echo(f"\n{directory}: all {len(reports) - len(absent)} components ok"
               + (f" ({', '.join(absent)}: absent, optional)" if absent else ""))


@weights_app.command("download")
def weights_download(directory: Path = typer.Argument(Path("pretrained_weights"), help="Destination folder.")) -> None:
    """Fetch the public weights from the Hugging Face Hub into the released layout."""
    from personalive_trt.build.download import download_weights

    try:
        download_weights(directory)
    except (RuntimeError, OSError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"downloaded weights into {directory}; verify with `personalive-trt weights check {directory}`")


def _register_bench() -> None:
    from personalive_trt.bench import bench

    app.command("bench", help="Measure the streaming loop: fps, latency, TFLOP/s, memory (see benchmarks/).")(bench)


_register_bench()

if __name__ == "__main__":
    app()
