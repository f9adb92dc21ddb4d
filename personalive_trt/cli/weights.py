"""``personalive-trt weights check|download``: validate a weights folder, or fetch the released weights."""
from __future__ import annotations

from pathlib import Path

import typer

from personalive_trt.cli.params import fail

weights_app = typer.Typer(no_args_is_help=True, help="Check or download the released weights.")


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
