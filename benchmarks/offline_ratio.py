"""The offline / stream per-frame ratio on a shared machine: both modes in one process, their calls interleaved.

``personalive-trt bench`` measures one mode per run; on a machine shared with other work the load drifts
between two runs (on the project's 2-core CI box a call took 3.5 s in one minute and 25 s in another), so
the ratio of two runs' ``per_frame_ms`` says more about the load than about the modes. Here one process
loads the networks once, then runs one pass of the offline mode over the sample clip
(:func:`personalive_trt.bench.offline.measure_offline`) and, after each of its windows, one call of the
streaming runtime on the same clip (its chunks in turn), so both see the same load. The offline mode runs as
``run --mode offline`` runs it: its runtime (:class:`~personalive_trt.runtime.offline_stream.OfflineStreamRuntime`,
CUDA graphs where they run, eager on the CPU as the stream side), or ``--reference-loop`` its reference loop.
Figures as the two reports define them: offline ``per_frame_ms`` = the pass's window times / N; stream
``per_frame_ms`` = call mean / window; ``ratio`` = offline / stream.

    python benchmarks/offline_ratio.py [--weights synthetic] [--resolution 64] [--device cpu] [--dtype fp32]
        [--vae full] [--max-frames N] [--reference-loop] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def measure(weights: str, resolution: int, device: str, dtype: str, vae: str, max_frames: int | None,
            reference_loop: bool = False) -> dict:
    import torch

    from personalive_trt.bench import offline
    from personalive_trt.bench.options import BenchOptions, resolve_device_dtype, stream_config
    from personalive_trt.bench.session import sample_inputs
    from personalive_trt.bench.timing import Clock, device_name, percentiles
    from personalive_trt.models.weights import load_models, resolve_weights
    from personalive_trt.runtime.stream import StreamRuntime

    options = BenchOptions(weights=weights, resolution=resolution, device=device, dtype=dtype, vae=vae)
    torch_device, torch_dtype = resolve_device_dtype(options)
    config = offline.offline_stream_config(options)
    reference, clip = offline.sample_offline_inputs(config, max_frames)
    models = load_models(resolve_weights(weights), device=torch_device, dtype=torch_dtype, vae=vae)
    graphs = None if torch_device.type == "cuda" else False
    loop = offline.open_loop(offline.open_offline_networks(models, config, "off", reference_loop), config,
                             clip.frames, options.seed, reference_loop, graphs)
    runtime = StreamRuntime.from_models(models, stream_config(options), backend="torch", seed=options.seed,
                                        graphs=graphs)
    stream_reference, chunks = sample_inputs(resolution, 4)
    stream_clock = Clock(torch_device, runtime.stream)
    stream_ms: list[float] = []

    def stream_call() -> None:
        begin = stream_clock.mark()
        runtime.step(chunks[len(stream_ms) % len(chunks)])
        stream_ms.append(stream_clock.ms(begin, stream_clock.mark()))

    with torch.no_grad():
        runtime.fuse_reference(stream_reference)
        runtime.step(chunks[-1])  # cold: lazy initialisation, discarded
        figures = offline.measure_offline(loop, reference, clip, 1, 1, offline.loop_clock(loop, torch_device),
                                          lambda line: print(line, file=sys.stderr, flush=True), between=stream_call)
    stream = percentiles(stream_ms)
    stream_per_frame = stream["mean"] / config.window
    return {"command": " ".join(sys.argv), "device": device_name(torch_device), "torch": torch.__version__,
            "weights": weights, "dtype": str(torch_dtype).removeprefix("torch."), "resolution": resolution,
            "vae": vae, "offline": {"runtime": loop.description, **figures},
            "stream": {"runtime": runtime.description, "calls": len(stream_ms), "step_ms": stream,
                       "per_frame_ms": round(stream_per_frame, 3)},
            "ratio": round(figures["per_frame_ms"] / stream_per_frame, 4),
            "window_ratio": round(figures["step_ms"]["mean"] / stream["mean"], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="synthetic")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--vae", default="full")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--reference-loop", action="store_true", help="time the offline reference loop "
                        "(OfflineAnimator) instead of the offline runtime")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = {"started": started, **measure(args.weights, args.resolution, args.device, args.dtype, args.vae,
                                         args.max_frames, args.reference_loop)}
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"offline {doc['offline']['per_frame_ms']:.1f} ms/frame ({doc['offline']['windows']} windows for "
          f"{doc['offline']['frames']} frames, {doc['offline']['keyframe_banks']} keyframe banks), stream "
          f"{doc['stream']['per_frame_ms']:.1f} ms/frame: offline / stream {doc['ratio']:.3f} "
          f"(per window / per call {doc['window_ratio']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
