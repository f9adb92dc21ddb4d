#!/usr/bin/env bash
# Fetch, here, the wheels the GPU check needs that the device machine lacks, into ./.whl (git-ignored).
#
# The device (Python 3.12, x86_64, no registry) has torch 2.11, transformers 5.17, huggingface_hub 1.33,
# numpy 2.5, onnx, onnxruntime (CPU), OpenCV, Pillow, safetensors, typer, tqdm, pyyaml, pytest. It lacks
# diffusers (which needs importlib_metadata, also absent there). PyAV, MediaPipe and FastAPI are not
# needed: the runtime, the networks and the benchmark import without them (tests/test_imports.py).
# diffusers 0.42.1 is the version this repository's venv runs with transformers 5.x and huggingface_hub >= 1.
# setuptools 80.9 builds the editable install of this project there (pyproject needs setuptools>=77; the
# image's own version is not known here).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
rm -rf "$out"
mkdir -p "$out"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$out" diffusers==0.42.1 importlib_metadata==8.7.0 setuptools==80.9.0
ls -l "$out"
total=$(du -sb "$out" | cut -f1)
echo "wheels: $((total / 1024)) KiB in $out"
if [ "$total" -gt $((48 * 1024 * 1024)) ]; then
    echo "error: $out holds $total bytes, over the 48 MiB budget" >&2
    exit 1
fi
