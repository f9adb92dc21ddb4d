"""``personalive-trt doctor``'s library: what this machine is, and which paths of the engine work on it.

No line of the CUDA-graph, fp16, compiled or TensorRT paths has run on the GPUs users have, so the doctor
checks them where they run and writes a report to paste into a bug (like ``python -m torch.utils.collect_env``
or ``flutter doctor``): the machine (:mod:`.environment`), the weights and engines folders (:mod:`.verdicts`), a
short synthetic stream through every path this machine can run, each compared with the fp32 eager reference
and timed (:mod:`.paths`), and the estimated device memory of `run` and `serve` (:mod:`.memory`); the report
(:mod:`.report`) says in its first line whether the default path of `run` works here.

:func:`run_doctor` is the one entry point; a command parses its options into :class:`DoctorOptions`.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DoctorOptions:
    """What to examine.

    Args:
        weights (`Sequence[str]`): weights folders or ``synthetic[:size]`` specs, one verdict each; empty: what
            ``run --weights auto`` would use (./pretrained_weights, else synthetic).
        engines (`Path`, *optional*): a `build` folder: its verdict, and its networks on their known answers.
        compile (`bool`, defaults to False): run the compiled path even with a cold compile cache (minutes).
        cameras (`bool`, defaults to True): probe the cameras.
        work_dir (`Path`, *optional*): keeps the tiny networks' ONNX export between runs (default: a temporary
            folder, removed afterwards; the command passes :func:`default_work_dir`, so a second run skips the
            export).
        max_sessions (`int`, defaults to 1): the ``serve --max-sessions`` of the memory estimate.
        memory_weights (`str`, *optional*): the weights whose sizes the memory estimate uses (default: the first
            valid folder of ``weights``, else the released sizes).
    """

    weights: Sequence[str] = ()
    engines: Path | None = None
    compile: bool = False
    cameras: bool = True
    work_dir: Path | None = None
    max_sessions: int = 1
    memory_weights: str | None = None

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions {self.max_sessions}: expected >= 1")


def default_work_dir() -> Path:
    """Where ``personalive-trt doctor`` keeps the tiny networks' export: ``$XDG_CACHE_HOME/personalive-trt/doctor``
    (``~/.cache/...`` without it). A user cache, not the engines folder: the doctor runs before anything is built,
    and must not create ``./engines_cache`` wherever it is started."""
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "personalive-trt" / "doctor"


def run_doctor(options: DoctorOptions, say: Callable[[str], None] = lambda line: None):
    """Examine this machine; returns the :class:`~personalive_trt.doctor.report.Report`. ``say`` gets a line per
    finding as it is made (progress for a minute-long run). Only a bug in the doctor itself raises."""
    import torch

    from personalive_trt.models.weights import resolve_weights
    from personalive_trt.doctor.environment import environment
    from personalive_trt.doctor.memory import estimate_run, memory_lines
    from personalive_trt.doctor.paths import CALLS, Shared, doctor_config, engines_path, run_paths
    from personalive_trt.doctor.report import Report
    from personalive_trt.doctor.verdicts import engines_verdict, weights_verdict
    from personalive_trt.runtime.self_check import seeded_frames

    start = time.perf_counter()
    env = environment(cameras=options.cameras)
    say(env.torch_line())
    specs = list(options.weights) or [resolve_weights("auto")]
    weights = [weights_verdict(spec, asked=bool(options.weights)) for spec in specs]
    for verdict in weights:
        say(verdict.line())
    engines = facts = None
    if options.engines is not None:
        engines, facts = engines_verdict(options.engines, specs[0] if options.weights else None)
        say(engines.line())

    cuda = env.cuda_available
    config = doctor_config(torch.device("cuda" if cuda else "cpu"))
    temporary = options.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="personalive-doctor-")) if temporary else Path(options.work_dir)
    try:
        shared = Shared(config=config, frames=seeded_frames(1 + CALLS * config.window, config.resolution, seed=11),
                        work_dir=work_dir, engines=options.engines, compile=options.compile)
        ort = next((p for p in env.packages if p.name == "ONNX Runtime"), None)
        providers = None
        if ort is not None and ort.version is not None:
            import onnxruntime

            providers = onnxruntime.get_available_providers()
        paths = run_paths(shared, cuda, providers, say)
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
    if facts is not None and facts.record is not None:
        paths.append(engines_path(options.engines, facts.record, facts.known_answers, cuda))
        say(paths[-1].line())

    memory_weights = options.memory_weights or next(  # a valid folder's sizes, else the released ones
        (spec for spec, v in zip(specs, weights) if v.status in ("ok", "info") and Path(spec).is_dir()),
        "synthetic:full")
    estimates = estimate_run(memory_weights)
    free = env.gpus[0].memory_free if env.gpus else None
    memory = memory_lines(estimates, free, options.max_sessions)
    for _, line in memory:
        say(line)
    stream = (f"tiny synthetic weights, {config.resolution}², window {config.window}, {CALLS} calls with a forced "
              "keyframe, each path against torch eager fp32 on the CPU")
    return Report(environment=env, weights=weights, engines=engines, paths=paths, memory=memory,
                  memory_estimates=estimates, stream=stream, seconds=time.perf_counter() - start)


__all__ = ["DoctorOptions", "default_work_dir", "run_doctor"]
