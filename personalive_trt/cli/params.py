"""The command line's shared vocabulary: one type per option that several commands take (its help and default
live here, once), and how every command reports bad input (one line on stderr, exit code 1).

A command declares ``weights: params.Weights = "auto"``; typer reads the option from the ``Annotated`` type.
Values are parsed into the enums of :mod:`personalive_trt.choices` by the options objects the commands build
(:class:`~personalive_trt.runtime.animator.AnimatorOptions`, ``BenchOptions``), not here: the CLI only parses,
builds one options object and calls one library function.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from personalive_trt.config import COMPILE_HELP, VAE_HELP

Weights = Annotated[str, typer.Option(
    help="Weights folder, 'synthetic' (tiny, CPU-fast), 'synthetic:small' or 'synthetic:full' ('auto': "
         "./pretrained_weights if present, else synthetic).")]
Backend = Annotated[str, typer.Option(
    help="torch (PyTorch modules), onnxruntime or tensorrt (engines built by `personalive-trt build`).")]
Engines = Annotated[Optional[Path], typer.Option(help="Engines folder of `build` (default ./engines_cache).")]
Device = Annotated[str, typer.Option(help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N.")]
Dtype = Annotated[str, typer.Option(help="auto (fp16 on a GPU, fp32 on the CPU), fp32 or fp16 (fp16 needs cuda).")]
Window = Annotated[int, typer.Option(help="Frames per chunk (the engines must be built for it).")]
Seed = Annotated[int, typer.Option(help="Seed of the diffusion noise.")]
Vae = Annotated[str, typer.Option("--vae", help=VAE_HELP)]
Compile = Annotated[str, typer.Option("--compile", help=COMPILE_HELP)]
NoCrop = Annotated[bool, typer.Option("--no-crop", help="Resize whole frames instead of framing the face.")]


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


def user_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (printed as one line); anything else keeps its traceback."""
    from personalive_trt.engines.backends import TensorRTNotAvailableError
    from personalive_trt.engines.cache import EngineError
    from personalive_trt.engines.folder import BuildError
    from personalive_trt.export.interface import ExportError
    from personalive_trt.media.io import MediaError
    from personalive_trt.models.weights import WeightsError
    from personalive_trt.runtime.compile import CompileError
    from personalive_trt.runtime.reference_loop import NonFiniteError

    return (*extra, MediaError, WeightsError, NonFiniteError, BuildError, EngineError, ExportError,
            TensorRTNotAvailableError, CompileError, ValueError, FileNotFoundError)
