#!/usr/bin/env bash
# The CUDA backend checked in one go on a machine with an NVIDIA GPU
# (issue 16): the `cuda` label's tests (a skipped case fails the check: on a
# GPU nothing may skip), then bench_cuda (decode tok/s of the 1B bf16
# stand-in vs HBM bandwidth, the decode GEMV alone, paged decode attention
# GB/s, prefill TFLOP/s). Stops at the first error with a message.
#
#   scripts/gpu-check.sh [build-dir]
#       On the GPU machine, with this project's build dependencies installed
#       (scripts/install-deps.sh): configures a Release build for this GPU's
#       architecture, builds, runs. About 3-5 minutes on an H100/H200.
#   scripts/gpu-check.sh --bundle DIR [arch]
#       On any machine with nvcc (no GPU needed): builds the same programs
#       for `arch` (default 90) and puts them in DIR with the models and
#       goldens they read and the runtime libraries a bare CUDA machine may
#       lack (not cuBLAS: the CUDA toolkit's own is used there). Copy DIR
#       to the GPU machine and run DIR/run.sh: seconds, no compiler, no
#       network. This is how the backend was first run (docs/backend-cuda.md).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
shared="${FASTINFER_SHARED_DIR:-$(pwd)/../shared}"
targets=(backend_cuda_test_cuda_backend backend_cuda_test_attention_plan bench_cuda)

configure_and_build() {  # build-dir arch
  mkdir -p "$(dirname "$1")"
  cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTINFER_WITH_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$2" -DFASTINFER_SHARED_DIR="$shared" \
    -DFASTINFER_BUILD_EXAMPLES=OFF -DFASTINFER_HEADER_CHECK=OFF >"$1.configure.log" 2>&1 ||
    { tail -30 "$1.configure.log"; fail "configure (log: $1.configure.log)"; }
  # Every CUDA test program the label has (new ones are globbed in).
  local more
  more=$(ninja -C "$1" -t targets all 2>/dev/null | sed -n 's/^\(backend_cuda_test_[a-z0-9_]*\): phony$/\1/p' | sort -u)
  # shellcheck disable=SC2086
  cmake --build "$1" -j "$(nproc)" --target "${targets[@]}" $more || fail "build of the cuda tests and bench_cuda"
}

if [[ "${1:-}" == "--bundle" ]]; then
  out="${2:?usage: scripts/gpu-check.sh --bundle DIR [arch]}"
  arch="${3:-90}"
  command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
  command -v nvcc >/dev/null || fail "nvcc not found (looked on PATH and in /usr/local/cuda/bin)"
  scripts/install-deps.sh || fail "scripts/install-deps.sh could not install the build dependencies"
  build="build/gpu-bundle-$arch"
  configure_and_build "$build" "$arch"
  rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
  cp "$build"/tests/backend_cuda_test_* "$out/bin/" 2>/dev/null || true
  find "$out/bin" -type f ! -perm -u+x -delete
  cp "$build/bench/bench_cuda" "$out/bin/"
  cp -r "$shared" "$out/shared"
  # Libraries the programs link that a bare CUDA image may not have (or has older).
  for lib in $(ldd "$out"/bin/* | awk '/=> \// {print $3}' | sort -u); do
    case "$(basename "$lib")" in
      libbenchmark*|libgomp*|libstdc++*|libgcc_s*|libcudart*) cp -L "$lib" "$out/lib/" ;;
    esac
  done
  cat >"$out/run.sh" <<'EOF'
#!/usr/bin/env bash
# Runs the bundled CUDA tests and bench_cuda on this machine's GPU (made by
# scripts/gpu-check.sh --bundle). Runs every program and the benchmark,
# then fails if any case failed or skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || fail "no GPU"
lt="$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' 2>/dev/null | head -1)"
[[ -n "$lt" ]] || fail "libcublasLt.so.13 not found (install the CUDA 13 toolkit's cuBLAS)"
export LD_LIBRARY_PATH="$here/lib:$(dirname "$lt")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FASTINFER_SHARED_DIR="$here/shared"
# Every program runs even after one fails, and the benchmark too: a GPU is
# lent rarely and briefly, so one run should bring back everything it can.
failed=()
for t in "$here"/bin/backend_cuda_test_*; do
  echo "== $(basename "$t")"
  log="$here/$(basename "$t").log"
  if ! "$t" --durations yes >"$log" 2>&1; then
    tail -60 "$log"
    failed+=("$(basename "$t") (log: $log)")
    continue
  fi
  grep -v "^[0-9.]* s: " "$log" | tail -3
  if grep -q "FASTINFER_SKIP" "$log"; then failed+=("$(basename "$t") skipped cases on a GPU (log: $log)"); fi
done
"$here/bin/bench_cuda" --benchmark_counters_tabular=true --benchmark_out="$here/bench-cuda.json" \
  --benchmark_out_format=json || failed+=("bench_cuda")
if ((${#failed[@]} > 0)); then
  printf 'gpu-check: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "gpu-check: ok ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
EOF
  chmod +x "$out/run.sh"
  echo "gpu-check: bundle in $out ($(du -sh "$out" | cut -f1)); on the GPU machine run $out/run.sh"
  exit 0
fi

build="${1:-build/gpu-check}"
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
configure_and_build "$build" "$arch"

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
