"""The ``personalive-trt`` command line. Each command parses, validates and calls one library function."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

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
    from personalive_trt.build import BuildError
    from personalive_trt.engines import EngineError, TensorRTNotAvailableError
    from personalive_trt.export.spec import ExportError
    from personalive_trt.media import MediaError
    from personalive_trt.pipeline import NonFiniteError
    from personalive_trt.weights import WeightsError

    return (MediaError, WeightsError, NonFiniteError, BuildError, EngineError, ExportError, TensorRTNotAvailableError,
            ValueError, FileNotFoundError)


@app.command()
def run(
    reference: str = typer.Option(..., "--reference", "-r", help="Portrait image file, or 'sample'."),
    driving: str = typer.Option(..., "--driving", "-d", help="Driving video file, or 'sample'."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .mp4 (H.264, driving fps, audio kept)."),
    weights: str = typer.Option(
        "auto", help="Weights folder, 'synthetic' (small, CPU-fast) or 'synthetic:full'. "
        "'auto': ./pretrained_weights if present, else synthetic."),
    max_frames: Optional[int] = typer.Option(None, help="Animate only the first N driving frames."),
    seed: int = typer.Option(42, help="Seed of the diffusion noise."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    dtype: str = typer.Option("fp32", help="fp32 or fp16 (fp16 needs cuda)."),
    no_crop: bool = typer.Option(False, "--no-crop", help="Resize whole frames instead of framing the face."),
    backend: str = typer.Option("torch", help="torch (PyTorch modules), onnxruntime or tensorrt (built by "
                                "`personalive-trt build`)."),
    engines: Optional[Path] = typer.Option(None, help="Engines folder of `build` (default ./engines_cache)."),
    window: int = typer.Option(4, help="Frames per chunk (the engines must be built for it)."),
) -> None:
    """Animate REFERENCE with the DRIVING video into OUTPUT."""
    from personalive_trt.animate import RunOptions, animate_file

    # SIGTERM would skip Python's cleanup; turn it into SystemExit so the writer removes its temp file.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    options = RunOptions(reference=reference, driving=driving, output=output, weights=weights,
                         max_frames=max_frames, seed=seed, device=device, dtype=dtype, crop=not no_crop,
                         backend=backend, engines=engines, window=window)
    try:
        stats = animate_file(options)
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(f"wrote {output} ({stats.frames} frames, {stats.fps:.2f} fps, {stats.backend}, weights: {stats.weights})")


@app.command()
def build(
    weights: str = typer.Option("auto", help="Weights folder, 'synthetic', 'synthetic:small' or 'synthetic:full' "
                                "('auto': ./pretrained_weights if present, else synthetic)."),
    backend: str = typer.Option("tensorrt", help="tensorrt (ONNX + fp16 engines) or onnxruntime (ONNX only)."),
    window: list[int] = typer.Option([4], help="Window size(s) to export the denoising UNet for (repeatable)."),
    engines: Path = typer.Option(Path("engines_cache"), help="Output folder (ONNX, engines, manifests)."),
    precision: Optional[str] = typer.Option(None, help="fp16 or fp32 (default: fp16 for tensorrt, fp32 for "
                                            "onnxruntime)."),
    override: list[str] = typer.Option([], help="Per-network precision, e.g. pose_encoder=fp32 (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Re-export and rebuild everything."),
) -> None:
    """Export every network to verified ONNX and build the engines `run --backend` uses."""
    from personalive_trt.animate import resolve_weights
    from personalive_trt.build import build as build_all

    overrides = {}
    for item in override:
        name, sep, value = item.partition("=")
        if not sep or value not in ("fp16", "fp32"):
            fail(f"--override {item!r}: expected NETWORK=fp16|fp32")
        overrides[name] = value
    try:
        record = build_all(resolve_weights(weights), engines, backend=backend, windows=window, precision=precision,
                           precision_overrides=overrides, force=force)
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(f"engines ready in {engines} ({record.backend}, {', '.join(record.precisions)}, "
               f"weights: {record.weights})")


@weights_app.command("check")
def weights_check(directory: Path = typer.Argument(..., help="Weights folder in the released layout.")) -> None:
    """Validate every file of a weights folder: a table per component, exit 1 on any problem."""
    from personalive_trt.weights import WeightsError, check_weights_dir

    try:
        reports = check_weights_dir(directory)
    except WeightsError as exc:
        fail(str(exc))
    width = max(len(f.path) for r in reports for f in r.files) if any(r.files for r in reports) else 20
    for report in reports:
        typer.echo(f"\n{report.name}: {'ok' if report.ok else 'PROBLEMS'}")
        typer.echo(f"  {'file':<{width}}  {'tensors':>7}  {'parameters':>13}  {'dtype':<9}  status")
        for f in report.files:
            typer.echo(f"  {f.path:<{width}}  {f.tensors:>7}  {f.parameters:>13,}  {f.dtypes:<9}  {f.status}")
        for problem in report.problems:
            typer.echo(f"  ! {problem}")
    bad = [r.name for r in reports if not r.ok]
    if bad:
        fail(f"{directory}: problems in {', '.join(bad)}")
    typer.echo(f"\n{directory}: all {len(reports)} components ok")


@weights_app.command("download")
def weights_download(directory: Path = typer.Argument(Path("pretrained_weights"), help="Destination folder.")) -> None:
    """Fetch the public weights from the Hugging Face Hub into the released layout."""
    from personalive_trt.hub import download_weights

    try:
        download_weights(directory)
    except (RuntimeError, OSError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"downloaded weights into {directory}; verify with `personalive-trt weights check {directory}`")


if __name__ == "__main__":
    app()
