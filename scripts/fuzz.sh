#!/usr/bin/env bash
# Builds the libFuzzer harness of every file reader (fuzz/, clang with
# ASan + UBSan, its own build dir build/fuzz) and runs each target SECONDS
# seconds, two at a time (ctest -L fuzz). Zero findings or it fails.
# Usage: scripts/fuzz.sh [SECONDS]   (CI: 30 from seed 1; scripts/fuzz-nightly.sh: longer,
#        random seed). FASTINFER_FUZZ_SEED=N picks the seed (0: random).
# fuzz/regressions/TARGET/ holds every input that once failed: always replayed.
# Findings are written as crash-*/leak-*/oom-*/timeout-* files in build/fuzz;
# reproduce one with:
#   FASTINFER_FUZZ_TARGET=gguf build/fuzz/fastinfer_fuzz build/fuzz/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
scripts/install-deps.sh
CXX="${FASTINFER_FUZZ_CXX:-clang++-14}" cmake -S fuzz -B build/fuzz -G Ninja \
  -DFASTINFER_FUZZ_SECONDS="$seconds" -DFASTINFER_FUZZ_SEED="${FASTINFER_FUZZ_SEED:-1}" -DFASTINFER_SHARED_DIR="${FASTINFER_SHARED_DIR:-$PWD/../shared}" >/dev/null
cmake --build build/fuzz
cd build/fuzz
ctest -L fuzz -j 2 --output-on-failure
