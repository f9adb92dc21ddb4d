"""``personalive-trt build``: export and build the engines ``run --backend`` uses, or fill the compile cache."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from personalive_trt.cli import params
from personalive_trt.cli.params import fail, user_errors
from personalive_trt.config import VAE_HELP


def build(
    weights: params.Weights = "auto",
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
    max_keyframes: Optional[int] = typer.Option(None, "--max-keyframes", help="History keyframe banks the engines "
                                                "hold (bank-length profile max 1+K; default 3, the online loop's). "
                                                "`run --mode offline` on these engines needs K >= the banks its "
                                                "clip appends (at most --keyframe-limit, default 20)."),
    compile_flag: bool = typer.Option(False, "--compile", help="With --backend torch: compile every window's "
                                      "networks on this machine's default device into ENGINES/torch_compile, so "
                                      "that `run`/`serve`/`bench --compile auto` start warm."),
) -> None:
    """Export every network to verified ONNX and build the engines `run --backend` uses."""
    from personalive_trt.models.weights import resolve_weights

    if compile_flag != (backend == "torch"):
        fail("--compile goes with --backend torch (it fills the compile cache; torch has no engines to build)")
    if max_keyframes is not None and (compile_flag or backend == "torch"):
        fail("--max-keyframes sizes the engines of --backend tensorrt/onnxruntime; torch sizes its banks at run time")
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
        record = build_all(resolve_weights(weights), engines, backend=backend, windows=window, vae=vae,
                           precision=precision, precision_overrides=overrides, force=force,
                           memory_check=not skip_memory_check, max_keyframes=max_keyframes)
    except user_errors() as exc:
        fail(str(exc))
    typer.echo(f"engines ready in {engines} ({record.backend}, {', '.join(record.precisions)}, "
               f"weights: {record.weights})")
