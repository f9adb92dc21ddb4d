#!/usr/bin/env bash
# The prepared device check: one command on the GPU machine, at most 5 minutes, at most 8 files in DIR.
#
#   bash scripts/gpu_check.sh [--out DIR]        on the device (DIR defaults to $OUT); carry .whl
#   bash scripts/gpu_check.sh --cpu --out DIR    the CPU smoke subset of the same steps (.ci/run runs it)
#   bash scripts/gpu_check.sh --compile [--out DIR]   on the device, the torch.compile run instead (issue 13):
#            the gpu step is tests/test_compile.py's gpu tests, the matrix is runtime_graphs_k0 beside
#            runtime_graphs_compile_k0 and _k3 (cold compile here, warm in a fresh process: compile_s); up to
#            about 9 minutes, so it is a second command, never part of the 5-minute check
#
# Steps, each under its own time limit (SIGINT first, so pytest still writes its JUnit file):
#   env      DIR/env.json: GPU, driver, Python, torch and its CUDA, package versions
#   doctor   (device only) DIR/doctor.json: `personalive-trt doctor` (every path this GPU runs, against the
#            CPU reference; its markdown goes to the log)
#   install  (device only) the wheels of scripts/fetch_device_wheels.sh into /tmp/site and the project
#            itself (editable, no registry, no build isolation: setuptools comes from .whl)
#   gpu      DIR/tests_gpu.xml: every `gpu`-marked test outside the suites below
#   matrix   DIR/matrix.json: python -m personalive_trt.bench.matrix (full-size synthetic weights, fp16, 512,
#            window 4, full VAE: reference Animator, runtime eager and with CUDA graphs, keyframes 0 and 3, and
#            the offline mode over the sample clip, its reference loop and its runtime with CUDA graphs (what
#            run --mode offline runs): their per-frame times beside reference_k0's)
#   suites   DIR/tests_suites.xml: the runtime, engines, bench, devices and synthetic-fill suites on this
#            machine (tests reading ../shared skip there: the golden data does not travel; summary.json counts
#            skips by reason)
#   summary  DIR/summary.json (python -m personalive_trt.bench.gpu_check summary); DIR/gpu_check.log holds
#            everything printed
# --cpu: no install; the gpu step over tests/test_runtime.py only (every test skips: the skip accounting is
# what runs), the matrix's reference_k0 and runtime_eager_k0 on tiny weights at 64x64, window 1, one call;
# the suites step runs tests/test_gpu_check.py and tests/test_imports.py.
# Exit status: 0 when summary.json says ok, 1 otherwise, 2 for bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.."

cpu=0
compile=0
out="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) cpu=1 ;;
        --compile) compile=1 ;;
        --out)
            [ $# -ge 2 ] || { echo "error: gpu_check.sh: --out needs a folder" >&2; exit 2; }
            out="$2"; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "error: gpu_check.sh: unknown argument '$1'; expected --cpu, --compile or --out DIR" >&2; exit 2 ;;
    esac
    shift
done
[ "$cpu$compile" != 11 ] || { echo "error: gpu_check.sh: --cpu and --compile exclude each other" >&2; exit 2; }
[ -n "$out" ] || { echo "error: gpu_check.sh: no output folder; pass --out DIR or set OUT" >&2; exit 2; }
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
python=python3

steps=()
step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2 start rc seconds
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    start=$(date +%s.%N)
    timeout -s INT -k 15 "$limit" "$@"
    rc=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    steps+=("--step" "$name:$rc:$seconds")
    echo "=== $name: exit $rc in $seconds s"
}

suites=(tests/test_runtime.py tests/test_engines.py tests/test_bench.py tests/test_devices.py
        tests/test_synthetic_fill.py)
pytest_args=(-q -p no:cacheprovider -o addopts="-ra")

if [ "$cpu" = 1 ]; then
    step env 60 "$python" -m personalive_trt.bench.gpu_check env --out "$out/env.json"
    step gpu 120 "$python" -m pytest "${pytest_args[@]}" -m gpu --junitxml "$out/tests_gpu.xml" tests/test_runtime.py
    step matrix 240 "$python" -m personalive_trt.bench.matrix --cpu --variants reference_k0,runtime_eager_k0 \
        --resolution 64 --window 1 --out "$out/matrix.json"
    step suites 120 "$python" -m pytest "${pytest_args[@]}" --junitxml "$out/tests_suites.xml" \
        tests/test_gpu_check.py tests/test_imports.py
else
    # The package is not importable before this step; the env step comes after it.
    step install 90 bash -c "$python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site $python -m pip install -q --no-index --no-deps \
        --no-build-isolation --no-cache-dir -e ."
    export PYTHONPATH=/tmp/site
    step env 30 "$python" -m personalive_trt.bench.gpu_check env --out "$out/env.json"
    # every path this GPU can run against the CPU reference (markdown in the log; exit 1: run's default fails)
    step doctor 60 "$python" -m personalive_trt.cli doctor --no-cameras --work-dir /tmp/doctor \
        --json "$out/doctor.json"
    ignore=()
    for suite in "${suites[@]}"; do ignore+=("--ignore=$suite"); done
    if [ "$compile" = 1 ]; then  # cold compiles: minutes each (tests/test_compile.py, runtime/compile.py)
        step gpu 200 "$python" -m pytest "${pytest_args[@]}" -m gpu --junitxml "$out/tests_gpu.xml" \
            tests/test_compile.py
        step matrix 300 "$python" -m personalive_trt.bench.matrix --out "$out/matrix.json" \
            --variants runtime_graphs_k0,runtime_graphs_compile_k0,runtime_graphs_compile_k3
    else
        step gpu 60 "$python" -m pytest "${pytest_args[@]}" -m gpu --junitxml "$out/tests_gpu.xml" \
            "${ignore[@]}" --ignore=tests/test_compile.py tests
        step matrix 150 "$python" -m personalive_trt.bench.matrix --out "$out/matrix.json" \
            --variants reference_k0,runtime_eager_k0,runtime_graphs_k0,offline_reference,offline_runtime_graphs,reference_k3,runtime_eager_k3,runtime_graphs_k3
        step suites 80 "$python" -m pytest "${pytest_args[@]}" --junitxml "$out/tests_suites.xml" "${suites[@]}"
    fi
fi

"$python" -m personalive_trt.bench.gpu_check summary "$out" "${steps[@]}"
