"""``personalive-trt bench`` (and ``python benchmarks/bench_stream.py``, the same command): measure the streaming
runtime. The protocol and every field of its report: :mod:`personalive_trt.bench.benchmark`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from personalive_trt.cli import params
from personalive_trt.cli.params import fail, user_errors


def bench(
    backend: params.Backend = "torch",
    no_graph: bool = typer.Option(False, "--no-graph", help="Run the runtime eagerly (no CUDA graphs)."),
    weights: str = typer.Option("auto", help="Weights folder, 'synthetic' (tiny, CPU-fast), 'synthetic:small' or "
                                "'synthetic:full' ('auto': ./pretrained_weights if present, else synthetic; engine "
                                "backends: the weights the engines were built from)."),
    engines: params.Engines = None,
    device: params.Device = "auto",
    dtype: params.Dtype = "auto",
    window: params.Window = 4,
    resolution: int = typer.Option(512, help="Frame size (multiple of 64; 512 is the model's)."),
    keyframes: int = typer.Option(0, help="History keyframes in effect during the measured calls (0..3)."),
    warmup: int = typer.Option(8, help="Calls of the discarded cold session (--mode offline: its windows)."),
    calls: Optional[int] = typer.Option(None, help="Measured calls (each phase; default 30); --mode offline: "
                                        "measured passes over the clip (default 1)."),
    capture_fps: Optional[float] = typer.Option(None, help="Capture rate for glass-to-glass latency (default: "
                                                "the measured fps)."),
    compare: bool = typer.Option(False, "--compare", help="Also run the reference Animator; print the speed ratio."),
    seed: params.Seed = 42,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
    vae: params.Vae = "full",
    compile_mode: params.Compile = "auto",
    mode: str = typer.Option("stream", "--mode", help="stream: the streaming runtime; offline: the original's "
                             "offline loop as run --mode offline runs it (its runtime), on the same clip, per frame."),
    max_frames: Optional[int] = typer.Option(None, help="--mode offline: the clip's first N frames (rounded down "
                                             "to a multiple of 4; default: the whole clip)."),
    reference_loop: bool = typer.Option(False, "--reference-loop", help="--mode offline: time the plain-PyTorch "
                                        "offline reference loop instead of the offline runtime (as run does)."),
) -> None:
    """Benchmark the streaming runtime: fps, step and chunk latency, glass-to-glass, stages, TFLOP/s, memory
    (--mode offline: the original's offline loop per frame on the same clip)."""
    from personalive_trt.bench.benchmark import run_benchmark
    from personalive_trt.bench.options import BenchError, BenchOptions
    from personalive_trt.bench.summary import summary
    from personalive_trt.choices import Mode

    options = BenchOptions(backend=backend, graphs=not no_graph, weights=weights, engines=engines, device=device,
                           dtype=dtype, window=window, resolution=resolution, keyframes=keyframes, warmup=warmup,
                           calls=calls if calls is not None else (1 if mode == Mode.OFFLINE else 30),
                           capture_fps=capture_fps, compare=compare, seed=seed, json=json_path, vae=vae,
                           compile=compile_mode, mode=mode, max_frames=max_frames, reference_loop=reference_loop)
    try:
        report = run_benchmark(options)
    except user_errors(BenchError) as exc:
        fail(str(exc))
    typer.echo(summary(report))
    if json_path is not None:
        typer.echo(f"wrote {json_path}")


def standalone_app() -> typer.Typer:
    """A one-command app running :func:`bench` (the script's entry point; tests drive it with CliRunner)."""
    app = typer.Typer(add_completion=False)
    app.command()(bench)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_stream.py ARGS``: the same command as ``personalive-trt bench``."""
    standalone_app()(args=argv, prog_name="bench_stream.py")
