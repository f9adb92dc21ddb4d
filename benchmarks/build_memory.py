"""Peak host memory and time of `build --backend onnxruntime`, per network, across weight sizes and canvases.

Usage:
    python benchmarks/build_memory.py --config synthetic:128 --config synthetic:small:256 \
        [--network denoising_unet_w4] [--precision fp32] [--cap-gib 11.5] [--json benchmarks/results/build_memory.json]
    python benchmarks/build_memory.py --fit benchmarks/results/build_memory.json [--hold-out synthetic:512] \
        [--extrapolate synthetic:full:512]

Each ``WEIGHTS:RESOLUTION`` runs in its own child process (a fresh interpreter, so one build's memory
never counts in another's), one at a time. The child runs :func:`personalive_trt.build.driver.build` into a
temporary engines folder and reports, per network: the resident memory just before its export started
(VmRSS; the weights still loaded plus the interpreter), and the export and verification peaks and times
the build wrote into its manifest (VmHWM reset per phase, see ``PeakRss``). The parent samples the child's
VmRSS every 50 ms (the whole build's peak, model loading included) and kills it above ``--cap-gib``
(recorded as ``killed``), so a measurement never takes the machine down.

The figures feed :mod:`personalive_trt.build.memory` (the estimate `build` checks before it starts):
``--fit`` fits its coefficients to the runs of a JSON file (``--hold-out`` leaves runs out to measure the
error on them), prints the model's error on every run and the shipped estimate next to each measured build
peak, and extrapolates each network's time from its FLOPs (counted on the meta device).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
from personalive_trt.build.driver import build
from personalive_trt.export.onnx_export import read_manifest

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

weights, resolution, precision, engines = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
only = sys.argv[5].split(",") if len(sys.argv) > 5 else None
before = {}
def log(line):
    if line.startswith("exporting "):
        before[line.split()[1]] = rss()
started = time.perf_counter()
if only is None:
    build(weights, engines, backend="onnxruntime", resolution=resolution, precision=precision, log=log)
else:  # these networks only, as build exports them; only their components are ever loaded
    import types
    from personalive_trt.build import memory as buildmem
    from personalive_trt.config import StreamConfig
    from personalive_trt.export.onnx_export import all_specs, export_all
    from personalive_trt.shapes import StreamShapes
    from personalive_trt.models.weights import (COMPONENTS, folder_configs, load_component, parse_weights_spec,
                                         synthetic_component)
    buildmem.return_freed_memory()  # as build does before it loads
    kind, value = parse_weights_spec(weights)
    unet_config = buildmem.meta_models(weights).denoising_unet.config
    shapes = StreamShapes.from_unet_config(StreamConfig(resolution=resolution), unet_config)
    needed = {all_specs([shapes])[name].component for name in only}
    modules = {}
    for component in COMPONENTS:
        if component.name not in needed:
            modules[component.name] = None
        elif kind == "synthetic":  # filled in place (no state dict): same sizes, other random numbers
            module = synthetic_component(component.name, str(value).partition(":")[0])
            modules[component.name] = module
        else:
            module = load_component(component, folder_configs(Path(value)), Path(value)).eval()
            modules[component.name] = module
    models = types.SimpleNamespace(**modules, source=weights, synthetic=kind == "synthetic")
    del modules, module  # export_all drops each component from `models`: no other reference may keep it
    export_all(models, [shapes], engines / "onnx", precisions=[precision], networks=only, release_components=True,
               log=log)
seconds = time.perf_counter() - started
manifest = read_manifest(engines / "onnx")
networks = {}
for name, entry in manifest["networks"].items():
    record = entry["precisions"][precision]
    networks[name] = {"rss_before_bytes": before[name], **record["memory"],
                      "export_seconds": record["export_seconds"], "verify_seconds": record["verify_seconds"]}
print("RESULT " + json.dumps({"seconds": round(seconds, 1), "networks": networks}))
"""


def parse_config(text: str) -> tuple[str, int]:
    weights, _, resolution = text.rpartition(":")
    if not weights or not resolution.isdigit():
        raise SystemExit(f"--config {text!r}: expected WEIGHTS:RESOLUTION, e.g. synthetic:small:256")
    return weights, int(resolution)


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(weights: str, resolution: int, precision: str, cap_bytes: int, only: list[str] | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="build-memory-") as tmp:
        child = subprocess.Popen([sys.executable, "-c", CHILD, weights, str(resolution), precision, tmp,
                                  *([",".join(only)] if only else [])],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started, peak, killed = time.perf_counter(), 0, False
        while child.poll() is None:
            peak = max(peak, rss_of(child.pid))
            if peak > cap_bytes:
                child.kill()
                killed = True
            time.sleep(0.05)
        out, err = child.communicate()
    result = {"weights": weights, "resolution": resolution, "precision": precision, "only": only,
              "wall_seconds": round(time.perf_counter() - started, 1), "sampled_peak_rss_bytes": peak}
    if killed:
        return result | {"killed": f"VmRSS above the {cap_bytes / 2**30:.1f} GiB cap"}
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        raise SystemExit(f"{weights} at {resolution}: build failed (exit {child.returncode}):\n{err[-3000:]}")
    measured = json.loads(lines[-1][len("RESULT "):])
    phases = [v for n in measured["networks"].values()
              for v in (n["export_peak_rss_bytes"], n["verify_peak_rss_bytes"]) if v]
    return result | measured | {"peak_rss_bytes": max([peak, *phases])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], help="WEIGHTS:RESOLUTION (repeatable)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument("--network", dest="networks", action="append", help="export only these networks (repeatable; "
                        "only their components are loaded); default: the whole `build`")
    parser.add_argument("--cap-gib", type=float, default=11.5, help="kill a build whose RSS passes this")
    parser.add_argument("--json", type=Path, help="append the runs to this JSON file")
    parser.add_argument("--fit", type=Path, help="fit the estimate's coefficients to the runs in this JSON file "
                        "and print them with the model's error on every run (no build is run)")
    parser.add_argument("--extrapolate", action="append", default=["synthetic:full:512"],
                        help="with --fit: WEIGHTS:RESOLUTION whose build time to extrapolate (repeatable)")
    parser.add_argument("--hold-out", action="append", default=[], help="WEIGHTS:RESOLUTION left out of the fit "
                        "(its error is then a held-out error; repeatable)")
    args = parser.parse_args()
    if args.fit:
        runs = json.loads(args.fit.read_text())["runs"]
        fit(runs, args.hold_out)
        fit_time(runs, args.extrapolate)
        return
    for text in args.config:
        weights, resolution = parse_config(text)
        run = measure(weights, resolution, args.precision, int(args.cap_gib * 2**30), args.networks)
        print(json.dumps({k: v for k, v in run.items() if k != "networks"}), flush=True)
        if args.json:  # after every run: a later run that fails keeps the earlier ones
            existing = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": []}
            existing["runs"].append(run | {"date": datetime.date.today().isoformat(), "machine": machine()})
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(existing, indent=1) + "\n")


def run_phases(run: dict) -> list:
    """:func:`personalive_trt.build.memory.phases` of a measured run (window 4, as measured)."""
    from personalive_trt.build import memory as buildmem
    from personalive_trt.config import StreamConfig
    from personalive_trt.shapes import StreamShapes

    models = buildmem.meta_models(run["weights"])
    shapes = StreamShapes.from_unet_config(StreamConfig(resolution=run["resolution"]), models.denoising_unet.config)
    return buildmem.phases(models, [shapes], run.get("only")), buildmem.load_peak(models)


UNET_KINDS = ("reference_unet", "bank_projector", "denoising_unet")


def measured_peak(run: dict, network: str) -> int:
    measured = run["networks"][network]
    return max(v for v in (measured["export_peak_rss_bytes"], measured["verify_peak_rss_bytes"]) if v)


def fit(runs: list[dict], hold_out: list[str]) -> None:
    """Non-negative least squares of ``peak - loaded = BASE + WEIGHT_FACTOR[path] * weights + ACTIVATION[kind] *
    activation`` (bytes; one row per network of every run not held out; ``path``: embedded or external
    weights), in two stages: BASE, WEIGHT_FACTOR and the UNets' ACTIVATION from the UNet networks alone
    (their weights change 12x between the tiny and small configs; every other network's weights are the
    same in both, so their rows cannot separate a weight factor from a constant), then each other kind's
    ACTIVATION with those fixed. Prints the
    coefficients and, per run, the worst measured/modelled ratio (no MARGIN)."""
    import numpy as np
    from scipy.optimize import nnls

    from personalive_trt.build import memory as buildmem

    runs = [r for r in runs if "networks" in r]
    held = {parse_config(text) for text in hold_out}
    per_run = {id(r): run_phases(r)[0] for r in runs}
    fitted = [(r, p) for r in runs if (r["weights"], r["resolution"]) not in held for p in per_run[id(r)]]
    unet = [(r, p) for r, p in fitted if p.kind in UNET_KINDS]
    kinds = sorted({p.kind for _, p in unet})
    # one weight factor per path: embedded (the tiny and small UNets) and external (the full-size UNets, when
    # measured; otherwise buildmem's value is kept)
    paths = ["embedded"] + (["external"] if any(p.external for _, p in unet) else [])
    rows = [[1.0] + [p.weights / 2**30 if p.external == (path == "external") else 0.0 for path in paths]
            + [p.activation / 2**30 if k == p.kind else 0.0 for k in kinds] for _, p in unet]
    coef, _ = nnls(np.array(rows), np.array([(measured_peak(r, p.network) - p.loaded) / 2**30 for r, p in unet]))
    base = coef[0] * 2**30
    factors = dict(buildmem.WEIGHT_FACTOR) | dict(zip(paths, coef[1:1 + len(paths)]))
    activation = dict(zip(kinds, coef[1 + len(paths):]))

    def factor(p) -> float:
        return factors["external" if p.external else "embedded"]

    for kind in sorted({p.kind for _, p in fitted} - set(kinds)):
        pairs = [(r, p) for r, p in fitted if p.kind == kind]
        rest = np.array([measured_peak(r, p.network) - p.loaded - base - factor(p) * p.weights for r, p in pairs])
        a = np.array([[p.activation] for _, p in pairs], dtype=float)
        activation[kind] = float(nnls(a / 2**30, rest / 2**30)[0][0])
    print(f"BASE = {base / 2**30:.3f} GiB, WEIGHT_FACTOR = " + "{" + ", ".join(
        f'"{k}": {v:.3f}' + ("" if k in paths else " (not fitted: no such run)") for k, v in factors.items()) + "}")
    print("ACTIVATION = {" + ", ".join(f'"{k}": {c:.2f}' for k, c in sorted(activation.items())) + "}")
    for run in runs:
        tag = "held out" if (run["weights"], run["resolution"]) in held else "fitted"
        ratios = sorted((measured_peak(run, p.network) / (base + p.loaded + factor(p) * p.weights
                                                          + activation[p.kind] * p.activation), p.network)
                        for p in per_run[id(run)])
        shipped = buildmem.estimate_for(run["weights"], [4], run["resolution"])
        print(f"{run['weights']}:{run['resolution']} ({tag}): build peak {run['peak_rss_bytes'] / 2**30:.2f} GiB, "
              f"shipped estimate {shipped.peak / 2**30:.2f} GiB (while {shipped.largest}); this fit's "
              f"measured/model: worst {ratios[-1][0]:.3f} ({ratios[-1][1]}), best {ratios[0][0]:.3f} ({ratios[0][1]})")


def verification_flops(models, shapes) -> dict[str, float]:
    """Network -> FLOPs of one forward pass over each of its verification cases (counted with
    FlopCounterMode on the meta device: shapes only, nothing computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from personalive_trt.export.onnx_export import all_specs
    from personalive_trt.export.specs import verification_cases

    out = {}
    for name, spec in all_specs([shapes]).items():
        wrapper = spec.wrap(getattr(models, spec.component)).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            for _, which, _ in verification_cases(spec):
                wrapper(*[torch.zeros(t.shape(which), dtype=t.dtype, device="meta") for t in spec.inputs])
        out[name] = float(counter.get_total_flops())
    return out


def fit_time(runs: list[dict], extrapolate: list[str]) -> None:
    """``export_seconds + verify_seconds = T0 + SECONDS_PER_TFLOP * verification TFLOPs`` (least squares over
    every network of every run), then the extrapolated time of each network of ``extrapolate`` configs."""
    import numpy as np

    from personalive_trt.build import memory as buildmem
    from personalive_trt.config import StreamConfig
    from personalive_trt.shapes import StreamShapes

    cache: dict = {}

    def flops(weights: str, resolution: int) -> dict[str, float]:
        if (weights, resolution) not in cache:
            models = buildmem.meta_models(weights)
            shapes = StreamShapes.from_unet_config(StreamConfig(resolution=resolution), models.denoising_unet.config)
            cache[weights, resolution] = verification_flops(models, shapes)
        return cache[weights, resolution]

    rows, ys = [], []
    for run in (r for r in runs if "networks" in r):
        for name, measured in run["networks"].items():
            rows.append([1.0, flops(run["weights"], run["resolution"])[name] / 1e12])
            ys.append(measured["export_seconds"] + measured["verify_seconds"])
    (t0, per_tflop), *_ = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)
    residual = np.array(ys) - np.array(rows) @ np.array([t0, per_tflop])
    print(f"time: T0 = {t0:.1f} s, SECONDS_PER_TFLOP = {per_tflop:.1f} (residuals {residual.min():+.0f} .. "
          f"{residual.max():+.0f} s over {len(ys)} networks)")
    for text in extrapolate:
        weights, resolution = parse_config(text)
        per_network = {name: t0 + per_tflop * value / 1e12 for name, value in flops(weights, resolution).items()}
        print(f"{text}: extrapolated {sum(per_network.values()) / 60:.0f} min here; " +
              ", ".join(f"{n} {v / 60:.1f} min ({flops(weights, resolution)[n] / 1e12:.1f} TFLOP)"
                        for n, v in per_network.items()))


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.platform()}"


if __name__ == "__main__":
    main()
