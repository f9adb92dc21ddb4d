"""What the start-up self-check costs, in steady steps of the same stream (a CPU figure is a ratio).

    python benchmarks/self_check_cost.py [--weights synthetic] [--resolution 64] [--window 1] [--repeats 3]
                                         [--threads 1] [--paths nothing compile graphs both]

The check rides on the warm-up a fast path makes at construction anyway (runtime/self_check.py, ``WarmUpCheck``),
so its cost is what a checked open takes over an unchecked open of the same path. Each path is opened both ways on
the same eager networks, interleaved, ``--repeats`` times:

* ``nothing``: the CPU default (no graphs, no compile): ``open_checked`` against a plain ``StreamRuntime``;
* ``compile``: compiled networks stood in for by the eager ones with a compiled state (no compiler runs: the
  runtime warms every kind of call up through them and freezes them, as it does real compiled networks), so the
  compiled-vs-eager check runs in full on the real warm-up; the compilation itself, equal both ways, is left out;
* ``graphs``: CUDA graphs stood in for by a replay that runs the call (graphs need a GPU): the capture warm-up
  runs every kind of call eagerly, as on a GPU, and the check replays one;
* ``both``: the two stand-ins together (a GPU's path with a warm compile cache): the compiled warm-up, then the
  capture warm-up, of every kind of call.

Prints what each open runs, counted (the loop's calls, warm-up, check and replay alike, and the portraits encoded),
and the median of each open and the extra cost of the check, in medians of one steady step (calls 1-5 of a
stream, measured before and after the opens), all in CPU seconds of this process (``time.process_time``: a shared
machine's other jobs inflate wall time by bursts, CPU time less). One torch thread by default (``--threads``): 2
threads that spin while waiting for each other, which CPU time counts, made the same open vary by a step or more
under load.
"""
from __future__ import annotations

import argparse
import statistics
import time

from personalive_trt.runtime.stream import StreamRuntime
from personalive_trt.runtime.testing import StandInCapture, counted_work, stand_in_compile


class StandInGraphs(StandInCapture, StreamRuntime):
    """A CPU runtime whose graph warm-up and capture of every kind of call run as on a GPU."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="synthetic")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default 1: see the docstring)")
    parser.add_argument("--paths", nargs="+", default=["nothing", "compile", "graphs", "both"],
                        choices=["nothing", "compile", "graphs", "both"])
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from personalive_trt.config import StreamConfig
    from personalive_trt.engines.networks import Networks
    from personalive_trt.models.weights import load_models
    from personalive_trt.runtime.self_check import open_checked, seeded_frames

    torch.manual_seed(0)
    config = StreamConfig(resolution=args.resolution, window=args.window)
    networks = Networks.from_models(load_models(args.weights, device="cpu", dtype=torch.float32), config)
    frames = seeded_frames(1 + 6 * config.window, config.resolution, seed=5)

    def timed(open_loop) -> float:
        # CPU seconds of this process (all its threads): on a shared machine other jobs' load inflates wall time
        # by bursts, CPU time far less
        started = time.process_time()
        open_loop()
        return time.process_time() - started

    def work(open_loop) -> tuple[int, int]:  # what an open runs, counted exactly (the seconds are noisy)
        with counted_work() as done:
            open_loop()
        return len(done.calls), len(done.portraits)

    def checked(**options):
        start = open_checked(networks, config, say=print, seed=3, **options)
        assert all(c.ok for c in start.checks), [c.describe() for c in start.checks]
        return start

    opens = {
        "nothing": (lambda: StreamRuntime(networks, config, seed=3), lambda: checked()),
        "compile": (lambda: StreamRuntime(stand_in_compile(networks), config, seed=3),
                    lambda: checked(compile=stand_in_compile)),
        "graphs": (lambda: StandInGraphs(networks, config, graphs=True, seed=3),
                   lambda: checked(graphs=True, runtime=StandInGraphs)),
        "both": (lambda: StandInGraphs(stand_in_compile(networks), config, graphs=True, seed=3),
                 lambda: checked(compile=stand_in_compile, graphs=True, runtime=StandInGraphs)),
    }
    runtime = StreamRuntime(networks, config, seed=3)
    runtime.fuse_reference(frames[0])
    runtime.step(frames[1:1 + config.window])  # the first call

    def steady_steps() -> list[float]:  # 5 steady calls (before keyframe_start: the test, one cdist, adds ~nothing)
        runtime.reset()
        runtime.fuse_reference(frames[0])
        runtime.step(frames[1:1 + config.window])
        return [timed(lambda i=i: runtime.step(frames[1 + i * config.window:1 + (i + 1) * config.window]))
                for i in range(1, 6)]

    steps = steady_steps()  # before and after the opens: the machine's load drifts
    seconds = {}
    for name in args.paths:
        plain, check = opens[name]
        runs = [(timed(plain), timed(check)) for _ in range(args.repeats)]  # interleaved: a shared box drifts
        seconds[name] = (statistics.median(p for p, _ in runs), statistics.median(c for _, c in runs),
                         work(plain), work(check))
    steps += steady_steps()
    step = statistics.median(steps)
    print(f"{args.weights}, {config.resolution}², window {config.window}, CPU fp32, {torch.get_num_threads()} threads, "
          f"CPU seconds of this process; steady step {step:.2f} s (median of {len(steps)})")
    for name, (plain, check, (plain_calls, plain_encoded), (calls, encoded)) in seconds.items():
        extra = check - plain
        print(f"  {name} to check: open unchecked {plain:.2f} s, checked {check:.2f} s (medians of {args.repeats}); "
              f"the check {extra:+.2f} s = {extra / step:+.2f} steady steps; calls {plain_calls} -> {calls} "
              f"({calls - plain_calls:+d}), portraits encoded {plain_encoded} -> {encoded}")


if __name__ == "__main__":
    main()
