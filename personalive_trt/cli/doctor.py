"""``personalive-trt doctor``: what this machine is and which paths of the engine work on it, as a report to paste
into a bug (:func:`personalive_trt.doctor.run_doctor`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from personalive_trt.cli import params
from personalive_trt.cli.params import fail, user_errors


def doctor(
    weights: list[str] = typer.Option([], help="Weights folder or synthetic[:size] to check (repeatable; default: "
                                      "what `run --weights auto` uses)."),
    engines: params.Engines = None,
    compile_flag: bool = typer.Option(False, "--compile", help="Run the compiled path even without a warm compile "
                                      "cache (a cold compile takes minutes on a CPU)."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    max_sessions: int = typer.Option(1, help="The `serve --max-sessions` of the memory estimate."),
    no_cameras: bool = typer.Option(False, "--no-cameras", help="Do not probe the cameras."),
    work_dir: Optional[Path] = typer.Option(None, help="Where the tiny networks' ONNX export is kept between runs "
                                            "(default: $XDG_CACHE_HOME/personalive-trt/doctor, else "
                                            "~/.cache/personalive-trt/doctor)."),
) -> None:
    """Check this machine: environment, weights, engines, a short synthetic stream through every path it can
    run, and the memory `run` needs. Exit code 0 when `run`'s default path works here, else 1."""
    from personalive_trt.doctor import DoctorOptions, default_work_dir, run_doctor

    try:
        options = DoctorOptions(weights=tuple(weights), engines=engines, compile=compile_flag,
                                cameras=not no_cameras, work_dir=work_dir or default_work_dir(),
                                max_sessions=max_sessions)
        report = run_doctor(options, say=lambda line: typer.echo(line, err=True))
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(report.markdown())
    if json_file is not None:
        report.write_json(json_file)
        typer.echo(f"wrote {json_file}", err=True)
    raise typer.Exit(report.exit_code)
