"""The ``bench`` command (``personalive-trt bench`` and ``python benchmarks/bench_stream.py``) and its summary."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from personalive_trt.bench.benchmark import run_benchmark
from personalive_trt.bench.options import BenchError, BenchOptions
from personalive_trt.config import COMPILE_HELP, VAE_HELP

def summary(report: dict) -> str:
    s, c, g = report["step_ms"], report["chunk_latency_ms"], report["glass_to_glass_ms"]
    lines = [
        f"{report['runtime']} on {report['device']} ({report['dtype']}, window {report['config']['window']}, "
        f"{report['config']['resolution']}px, {report['keyframes']} keyframes, vae {report['vae']})",
        f"  step      p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  p99 {s['p99']:.1f} ms   {report['fps']:.2f} fps "
        f"({report['throughput_mode']})",
        f"  chunk     p50 {c['p50']:.1f}  p95 {c['p95']:.1f}  p99 {c['p99']:.1f} ms   glass-to-glass p50 "
        f"{g['p50']:.1f} ms at {report['capture_fps']:.2f} fps capture",
        f"  fusion    {report['reference_fusion_ms']:.1f} ms (cold {report['reference_fusion_cold_ms']:.1f}), first "
        f"frame {report['time_to_first_frame_ms']:.1f} ms",
    ]
    stages = report["stages_ms"]
    parts = "  ".join(f"{role} {ms:.1f}" for role, ms in stages["networks"].items())
    lines.append(f"  eager     {stages['eager_step_p50']:.1f} ms = {parts}  glue {stages['glue']:.1f}")
    flops = report["flops"]
    if flops["tflops"] is not None:
        lines.append(f"  compute   {flops['per_step'] / 1e12:.3f} TFLOP/step, {flops['tflops']:.3f} TFLOP/s")
    memory = report["memory"]
    peak = memory.get("peak_allocated_mb", memory.get("peak_mb"))
    lines.append(f"  memory    peak {peak} MiB ({memory['kind']})")
    if "compare" in report:
        cmp = report["compare"]
        lines.append(f"  compare   reference Animator step p50 {cmp['step_ms']['p50']:.1f} ms; speed ratio "
                     f"(reference / runtime) {cmp['speedup']:.2f}x")
    return "\n".join(lines)


def _user_errors() -> tuple[type[BaseException], ...]:
    from personalive_trt.engines.folder import BuildError
    from personalive_trt.engines import EngineError, TensorRTNotAvailableError
    from personalive_trt.media import MediaError
    from personalive_trt.runtime.reference_loop import NonFiniteError
    from personalive_trt.runtime.compile import CompileError
    from personalive_trt.models.weights import WeightsError

    return (BenchError, MediaError, WeightsError, NonFiniteError, BuildError, EngineError, TensorRTNotAvailableError,
            CompileError, ValueError, FileNotFoundError)


def bench(
    backend: str = typer.Option("torch", help="torch, onnxruntime or tensorrt (engines from `personalive-trt build`)."),
    no_graph: bool = typer.Option(False, "--no-graph", help="Run the runtime eagerly (no CUDA graphs)."),
    weights: str = typer.Option("auto", help="Weights folder, 'synthetic', 'synthetic:small' or 'synthetic:full' "
                                "('auto': ./pretrained_weights if present, else synthetic; engine backends: the "
                                "weights the engines were built from)."),
    engines: Optional[Path] = typer.Option(None, help="Engines folder of `build` (default ./engines_cache)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp16 or fp32."),
    window: int = typer.Option(4, help="Frames per chunk."),
    resolution: int = typer.Option(512, help="Frame size (multiple of 64; 512 is the model's)."),
    keyframes: int = typer.Option(0, help="History keyframes in effect during the measured calls (0..3)."),
    warmup: int = typer.Option(8, help="Calls of the discarded cold session."),
    calls: int = typer.Option(30, help="Measured calls (each phase)."),
    capture_fps: Optional[float] = typer.Option(None, help="Capture rate for glass-to-glass latency (default: "
                                                "the measured fps)."),
    compare: bool = typer.Option(False, "--compare", help="Also run the reference Animator; print the speed ratio."),
    seed: int = typer.Option(42, help="Seed of the diffusion noise."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
    vae: str = typer.Option("full", "--vae", help=VAE_HELP),
    compile_mode: str = typer.Option("auto", "--compile", help=COMPILE_HELP),
) -> None:
    """Benchmark the streaming runtime: fps, step and chunk latency, glass-to-glass, stages, TFLOP/s, memory."""
    options = BenchOptions(backend=backend, graphs=not no_graph, weights=weights, engines=engines, device=device,
                           dtype=dtype, window=window, resolution=resolution, keyframes=keyframes, warmup=warmup,
                           calls=calls, capture_fps=capture_fps, compare=compare, seed=seed, json=json_path, vae=vae,
                           compile=compile_mode)
    try:
        report = run_benchmark(options)
    except _user_errors() as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
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
