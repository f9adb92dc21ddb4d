#!/usr/bin/env bash
# The prepared device check: one command on the GPU machine, at most 10 minutes, at most 8 files in DIR.
#
#   bash scripts/gpu_check.sh [--out DIR]        on the device (DIR defaults to $OUT); carry .whl
#   bash scripts/gpu_check.sh --cpu --out DIR    the CPU smoke subset of the same steps (.ci/run runs it)
#
# Steps, each under its own time limit (SIGINT first, so pytest still writes its JUnit file):
#   env      DIR/env.json: GPU, driver, Python, torch and its CUDA, package versions
#   install  (device only) the wheels of scripts/fetch_device_wheels.sh into /tmp/site and the project
#            itself (editable, no registry, no build isolation: setuptools comes from .whl)
#   gpu      DIR/tests_gpu.xml: every `gpu`-marked test outside the suites below (tests/test_compile.py's
#            compiled-graphs-vs-eager fp16 parity among them: its cold compile is most of the step)
#   matrix   DIR/matrix.json: python -m personalive_trt.bench.matrix (full-size synthetic weights, fp16, 512,
#            window 4, full VAE: reference Animator, runtime eager, with CUDA graphs, and with CUDA graphs +
#            torch.compile (cold compile here, warm compile in a fresh process: compile_s), keyframes 0 and 3;
#            the compiled variants' cold starts may not fit the limit: a session short of time passes
#            --variants to the matrix, e.g. reference_k0,runtime_graphs_k0,runtime_graphs_compile_k0)
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
out="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) cpu=1 ;;
        --out)
            [ $# -ge 2 ] || { echo "error: gpu_check.sh: --out needs a folder" >&2; exit 2; }
            out="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "error: gpu_check.sh: unknown argument '$1'; expected --cpu or --out DIR" >&2; exit 2 ;;
    esac
    shift
done
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
    ignore=()
    for suite in "${suites[@]}"; do ignore+=("--ignore=$suite"); done
    step gpu 150 "$python" -m pytest "${pytest_args[@]}" -m gpu --junitxml "$out/tests_gpu.xml" "${ignore[@]}" tests
    step matrix 240 "$python" -m personalive_trt.bench.matrix --out "$out/matrix.json"
    step suites 80 "$python" -m pytest "${pytest_args[@]}" --junitxml "$out/tests_suites.xml" "${suites[@]}"
fi

"$python" -m personalive_trt.bench.gpu_check summary "$out" "${steps[@]}"
