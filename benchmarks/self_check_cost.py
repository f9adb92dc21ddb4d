"""What the start-up self-check costs, in steady steps of the same stream (a CPU figure is a ratio).

    python benchmarks/self_check_cost.py [--weights synthetic] [--resolution 64] [--window 1] [--repeats 3]

Opens the streaming runtime three ways on the same eager networks and times each open: plain
(``StreamRuntime``), through :func:`~personalive_trt.runtime.self_check.open_checked` with nothing to check (the
CPU default: no graphs, no compile), and with a stand-in compile step that returns the same networks, so the
compiled-vs-eager check runs in full (prepare: a seeded portrait fused and one first call; then the same call
twice, through each set of networks). The graph-replay check costs the same calls (a replay instead of the second),
plus nothing on a CPU, where graphs do not run. Prints the median of each and the extra cost of the check over
the plain open, in medians of one steady step (a call with the keyframe test).
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="synthetic")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from personalive_trt.config import StreamConfig
    from personalive_trt.engines.networks import Networks
    from personalive_trt.models.weights import load_models
    from personalive_trt.runtime.self_check import open_checked, seeded_frames
    from personalive_trt.runtime.stream import StreamRuntime

    torch.manual_seed(0)
    config = StreamConfig(resolution=args.resolution, window=args.window)
    networks = Networks.from_models(load_models(args.weights, device="cpu", dtype=torch.float32), config)
    frames = seeded_frames(1 + 6 * config.window, config.resolution, seed=5)

    def timed(open_loop) -> float:
        started = time.perf_counter()
        open_loop()
        return time.perf_counter() - started

    opens = {
        "plain": lambda: StreamRuntime(networks, config, seed=3),
        "checked, nothing to check": lambda: open_checked(networks, config, say=print, seed=3),
        "checked, compile check": lambda: open_checked(networks, config, compile=lambda n: n, say=print, seed=3),
    }
    seconds = {name: statistics.median(timed(open_loop) for _ in range(args.repeats))
               for name, open_loop in opens.items()}
    runtime = StreamRuntime(networks, config, seed=3)
    runtime.fuse_reference(frames[0])
    runtime.step(frames[1:1 + config.window])  # the first call
    steps = []
    for i in range(1, 6):
        chunk = frames[1 + i * config.window:1 + (i + 1) * config.window]
        started = time.perf_counter()
        runtime.step(chunk)
        steps.append(time.perf_counter() - started)
    step = statistics.median(steps)
    print(f"{args.weights}, {config.resolution}², window {config.window}, CPU fp32, {torch.get_num_threads()} threads;"
          f" steady step {step * 1e3:.0f} ms (median of {len(steps)})")
    for name, value in seconds.items():
        extra = value - seconds["plain"]
        print(f"  open {name}: {value:.2f} s (median of {args.repeats}); over plain {extra:+.2f} s = "
              f"{extra / step:+.1f} steady steps")


if __name__ == "__main__":
    main()
