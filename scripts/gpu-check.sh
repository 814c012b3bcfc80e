#!/usr/bin/env bash
# The CUDA backend checked in one go on a machine with an NVIDIA GPU
# (issue 16): configures a Release build with CUDA on for this GPU's
# architecture, builds the `cuda` label's tests and bench_cuda, runs
# `ctest -L cuda` (a skipped case fails the check: on a GPU nothing may
# skip; point FASTINFER_SHARED_DIR at the models and goldens if ../shared is
# not beside the checkout), then the benchmark (decode tok/s of the 1B bf16
# stand-in vs HBM bandwidth, paged decode attention GB/s, prefill TFLOP/s).
# Stops at the first error with a message. About 3-5 minutes on an H100/H200.
# Usage: scripts/gpu-check.sh [build-dir]   (default build/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
build="${1:-build/gpu-check}"
shared="${FASTINFER_SHARED_DIR:-$(pwd)/../shared}"

command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader ||
  fail "nvidia-smi cannot query the GPU"
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
command -v nvcc >/dev/null || fail "nvcc not found (looked on PATH and in /usr/local/cuda/bin)"
nvcc --version | tail -1
# This GPU's architecture only (compute_cap 9.0 -> 90): a third of the compile time of 80;90.
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
[[ "$arch" =~ ^[0-9]+$ ]] || fail "could not read the GPU's compute capability (got '$arch')"

scripts/install-deps.sh || fail "scripts/install-deps.sh could not install the build dependencies"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTINFER_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DFASTINFER_SHARED_DIR="$shared" \
  -DFASTINFER_BUILD_EXAMPLES=OFF -DFASTINFER_HEADER_CHECK=OFF >"$build.configure.log" 2>&1 ||
  { tail -30 "$build.configure.log"; fail "configure (log: $build.configure.log)"; }
cmake --build "$build" -j "$(nproc)" --target backend_cuda_test_cuda_backend backend_cuda_test_attention_plan bench_cuda ||
  fail "build of the cuda tests and bench_cuda"

log="$build/ctest-cuda.log"
ctest --test-dir "$build" -L cuda --output-on-failure --no-tests=error 2>&1 | tee "$log" ||
  fail "ctest -L cuda (log: $log)"
grep -q "100% tests passed" "$log" || fail "ctest -L cuda did not pass every test (log: $log)"
if grep -q "(Skipped)" "$log"; then
  fail "some cuda tests were skipped on a GPU (see $log; FASTINFER_SHARED_DIR=$shared)"
fi

"$build/bench/bench_cuda" --benchmark_counters_tabular=true | tee "$build/bench-cuda.log" ||
  fail "bench_cuda (log: $build/bench-cuda.log)"
echo "gpu-check: ok ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
