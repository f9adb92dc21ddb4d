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
    from personalive_trt.media import MediaError
    from personalive_trt.pipeline import NonFiniteError
    from personalive_trt.weights import WeightsError

    return MediaError, WeightsError, NonFiniteError, ValueError, FileNotFoundError


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
) -> None:
    """Animate REFERENCE with the DRIVING video into OUTPUT."""
    from personalive_trt.animate import RunOptions, animate_file

    # SIGTERM would skip Python's cleanup; turn it into SystemExit so the writer removes its temp file.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    options = RunOptions(reference=reference, driving=driving, output=output, weights=weights,
                         max_frames=max_frames, seed=seed, device=device, dtype=dtype, crop=not no_crop)
    try:
        stats = animate_file(options)
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(f"wrote {output} ({stats.frames} frames, {stats.fps:.2f} fps, weights: {stats.weights})")


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
