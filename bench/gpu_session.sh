#!/usr/bin/env bash
# The GPU checks in one run, for a machine with an NVIDIA GPU and CuPy but maybe no network:
# the GPU tests (tests/gpu: zoo networks step by step against the float64 reference, device
# arrays, training steps against the CPU's, ResNet-50 at batch 32), then the GPU benchmark
# (bench/bench_gpu.py: ResNet-50 and ResNet-18 at batch 1 and 32 against PyTorch's CUDA build,
# and ResNet-18's training step at batch 32). Logs and bench/results/gpu.json go to $OUT
# (default /tmp/cnnc-gpu).
#
#     bash bench/gpu_session.sh [python]      # from the repository's root
#
# cnnc runs from this checkout without being installed (the repository is the package). The
# Python given (default python3) must have NumPy, Numba, networkx, CuPy, PyTorch, pytest and
# hypothesis; what it lacks (lark, usually) can come as wheels in .whl/, installed from there
# without a network, e.g. prepared on a machine that has one with
#     pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl lark
set -uo pipefail
py=${1:-python3}
out=${OUT:-/tmp/cnnc-gpu}
mkdir -p "$out"
site=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site/wheels" .whl/*.whl
fi
ln -s "$PWD" "$site/cnnc"
export PYTHONPATH="$site:$site/wheels${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CNNC_CACHE_DIR=${CNNC_CACHE_DIR:-$site/cache}
"$py" - <<'PY' 2>&1 | tee "$out/versions.txt"
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "numba", "llvmlite", "networkx", "lark", "cupy", "torch"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # a missing package: the run below says where it is needed
        print(name, "MISSING:", type(e).__name__, e)
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print("gpu", props["name"].decode(), "sm", props["major"], props["minor"])
PY
"$py" -m pytest -p no:cacheprovider -q -rs tests/gpu 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
"$py" bench/bench_gpu.py --models resnet50 resnet18 --batches 1 32 --train resnet18 \
    --train-batch 32 2>&1 | tee "$out/gpu_bench.log"
bench=${PIPESTATUS[0]}
cp bench/results/gpu.json "$out/" 2>/dev/null
echo "tests exit $tests, benchmark exit $bench; logs in $out"
exit $(( tests || bench ))
