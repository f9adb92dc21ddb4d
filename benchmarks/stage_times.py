"""Time each network of one streaming step (the reference loop's eight calls), per backend.

Usage:
    python benchmarks/stage_times.py --weights synthetic --device cpu --repeats 3 [--json out.json]
    python benchmarks/stage_times.py --weights synthetic:full --device cuda --dtype fp16 --repeats 20

Warm-up excluded; CUDA timings use events around each call (the clock is read after a sync);
CPU timings use perf_counter. Reports the median per network and the sum of one step's calls.
This measures networks in isolation, not the streaming loop (benchmarks for the graph-captured
runtime come with it).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from personalive_trt import StreamConfig, load_models
from personalive_trt.engines.networks import Networks


def step_inputs(nets: Networks, device: torch.device, dtype: torch.dtype) -> dict[str, tuple]:
    """One step's inputs per network, with the shapes the loop uses in steady state."""
    s, g = nets.shapes, torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, low=-1.0, high=1.0):
        return (torch.rand(shape, generator=g) * (high - low) + low).to(device, dtype)

    clip = rand(*s.clip_embeds())
    kv = [(rand(*s.bank(i)), rand(*s.bank(i))) for i in range(len(s.banks))]
    timesteps = torch.tensor(s.config.pile_timesteps, device=device)
    return {
        "pose_encoder": (rand(*s.cond_frames(s.window), low=0.0),),
        "motion_encoder": (rand(*s.faces(s.window)),),
        "pose_guider": ((rand(*s.keypoint_maps(s.window), low=0.0) > 0.99).to(dtype),),
        "denoising_unet": (rand(*s.latent_pile()), timesteps, clip, rand(*s.motion_states(s.pile)),
                           rand(*s.pose_features(s.pile)), kv),
        "vae_decoder": (rand(*s.latent_frames(s.window)),),
    }


def time_call(fn, repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="synthetic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    config = StreamConfig()
    nets = Networks.from_models(load_models(args.weights, device=device, dtype=dtype), config)
    results = {}
    with torch.no_grad():
        for role, inputs in step_inputs(nets, device, dtype).items():
            times = time_call(lambda: getattr(nets, role)(*inputs), args.repeats, device)
            results[role] = {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}
            print(f"{role:15s} {results[role]['median_s'] * 1e3:10.1f} ms", flush=True)
    total = sum(r["median_s"] for r in results.values())
    print(f"{'step (sum)':15s} {total * 1e3:10.1f} ms  ({config.window / total:.2f} fps)")
    report = {
        "command": " ".join(sys.argv), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "weights": args.weights, "dtype": args.dtype, "networks": results,
        "step_seconds": total,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
