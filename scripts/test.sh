#!/usr/bin/env bash
# Installs the dependencies, builds and runs every test. Usage: scripts/test.sh [release|debug|asan]
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
scripts/install-deps.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
# Tests run side by side (-j): OpenMP workers must sleep, not spin, while they wait.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
ctest --preset "$preset" -j "$(nproc)" --label-exclude opt-in
