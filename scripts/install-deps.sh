#!/usr/bin/env bash
# Installs fastinfer's build dependencies from Debian's packages. Idempotent:
# does nothing when every package is already there.
set -euo pipefail
packages=(build-essential cmake ninja-build libxsimd-dev catch2 libbenchmark-dev
          libomp-dev nlohmann-json3-dev libcli11-dev
          libeigen3-dev                            # bench_kernels' baseline only (the library needs none)
          libcpp-httplib-dev                       # examples/server
          pkgconf python3-venv python3-jsonschema  # tests/package, scripts/test-packaging.sh, server tests' venv
          time clang-14 libclang-rt-14-dev         # time: peak-RSS checks of the CLI tests; clang: scripts/fuzz.sh
          mpi-default-dev mpi-default-bin)         # MPI: the disaggregated-serving transport's tests and example
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
