"""The device check's Python half (``scripts/gpu_check.sh`` runs the steps; this records and summarises them).

``python -m personalive_trt.bench.gpu_check env --out DIR/env.json``
    the machine: GPU name, capability, memory and driver (``nvidia-smi``), Python, torch and its CUDA, and the
    versions of the packages the check uses (``null`` where one is absent).

``python -m personalive_trt.bench.gpu_check summary DIR --step NAME:RC:SECONDS ...``
    ``DIR/summary.json``: every step with its exit status and time, the tests of every JUnit file in DIR
    (passed, failed, errors, skipped; skips counted by reason, so a suite that skipped because the golden
    data under ``../shared`` does not travel reads as such, not as a pass), and the benchmark matrix's variants
    by status. ``ok`` is true when every step exited 0, no test failed or errored, and no variant failed.
    Exits 1 when not ``ok``.

Only the standard library at module level: the ``summary`` of a run whose install step failed still works.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

PACKAGES = ("torch", "numpy", "diffusers", "transformers", "huggingface_hub", "onnx", "onnxruntime", "tensorrt",
            "cv2", "av", "safetensors", "pytest")
MATRIX_FILE = "matrix.json"
SUMMARY_FILE = "summary.json"


def environment() -> dict:
    """What the check ran on (see the module docstring)."""
    import importlib

    versions = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            versions[name] = None
        else:
            versions[name] = str(getattr(module, "__version__", "unknown"))
    env = {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
           "nvidia_smi": _nvidia_smi(), "cuda_available": False, "gpus": []}
    import torch

    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    for index in range(torch.cuda.device_count() if env["cuda_available"] else 0):
        props = torch.cuda.get_device_properties(index)
        env["gpus"].append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                            "memory_bytes": int(props.total_memory), "multiprocessors": props.multi_processor_count})
    if env["cuda_available"]:
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _nvidia_smi() -> dict:
    """``{"gpus": [...]}``: driver, GPU and clocks as ``nvidia-smi`` reports them, or ``{"error": ...}``."""
    fields = ("name", "driver_version", "memory.total", "clocks.max.sm", "power.limit", "compute_mode")
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if result.returncode != 0:
        text = (result.stderr or result.stdout).strip()
        return {"error": text.splitlines()[0] if text else f"exit {result.returncode}"}
    return {"gpus": [dict(zip(fields, (v.strip() for v in line.split(","))))
                     for line in result.stdout.strip().splitlines()]}


def junit_counts(path: Path) -> dict:
    """Tests of one JUnit XML file (pytest's ``--junitxml``): counts, the failed ids, skips by reason."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"{path}: not a readable JUnit XML file ({exc})") from exc
    counts = Counter()
    failed: list[str] = []
    skips: Counter = Counter()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                failed.append(name)
                break
            if child.tag == "skipped":
                outcome = "skipped"
                skips[(child.get("message") or "").strip()[:200]] += 1
                break
        counts[outcome] += 1
    return {"passed": counts["passed"], "failed": counts["failed"], "errors": counts["errors"],
            "skipped": counts["skipped"], "failed_ids": failed,
            "skip_reasons": [{"reason": reason, "count": n} for reason, n in skips.most_common()]}


def parse_step(text: str) -> dict:
    """``NAME:RC:SECONDS`` (what the shell script passes) -> a step record."""
    try:
        name, rc, seconds = text.rsplit(":", 2)
        return {"name": name, "rc": int(rc), "seconds": float(seconds),
                "timed_out": int(rc) in (124, 137)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--step {text!r}: expected NAME:RC:SECONDS") from None


def summarize(out_dir: Path, steps: list[dict]) -> dict:
    """``summary.json``'s document for the files in ``out_dir`` (see the module docstring)."""
    tests = {}
    for path in sorted(out_dir.glob("*.xml")):
        tests[path.stem] = junit_counts(path)
    totals = {key: sum(t[key] for t in tests.values()) for key in ("passed", "failed", "errors", "skipped")}
    matrix = None
    matrix_path = out_dir / MATRIX_FILE
    if matrix_path.is_file():
        try:
            doc = json.loads(matrix_path.read_text())
        except ValueError as exc:
            raise ValueError(f"{matrix_path}: not JSON ({exc})") from exc
        matrix = {"device": doc.get("device"), "weights": doc.get("weights"),
                  "variants": {v["name"]: v["status"] for v in doc.get("variants", [])},
                  "failed": list(doc.get("failed", []))}
    ok = (bool(steps) and all(s["rc"] == 0 for s in steps) and totals["failed"] == 0 and totals["errors"] == 0
          and bool(tests) and (matrix is None or not matrix["failed"]))
    return {"ok": ok, "steps": steps, "tests": totals, "test_files": tests, "matrix": matrix}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m personalive_trt.bench.gpu_check",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="write the machine's description")
    env.add_argument("--out", type=Path, required=True)
    summary = commands.add_parser("summary", help="write DIR/summary.json from the steps and the files in DIR")
    summary.add_argument("dir", type=Path)
    summary.add_argument("--step", type=parse_step, action="append", default=[], help="NAME:RC:SECONDS")
    args = parser.parse_args(argv)
    if args.command == "env":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(environment(), indent=2) + "\n")
        return 0
    if not args.dir.is_dir():
        parser.error(f"{args.dir}: no such folder")
    try:
        doc = summarize(args.dir, args.step)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    (args.dir / SUMMARY_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    t = doc["tests"]
    print(f"gpu check: {'ok' if doc['ok'] else 'NOT ok'}; tests {t['passed']} passed, {t['failed']} failed, "
          f"{t['errors']} errors, {t['skipped']} skipped; steps "
          + ", ".join(f"{s['name']} rc={s['rc']} {s['seconds']:.0f}s" for s in doc["steps"])
          + (f"; matrix failed: {', '.join(doc['matrix']['failed'])}" if doc["matrix"] and doc["matrix"]["failed"]
             else ""))
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
