#!/usr/bin/env bash
# The install routes and dependency versions that tests/package (run by
# scripts/test.sh) does not cover. Needs PyPI once (Conan, one wheel, cached
# in build/cache or $FASTINFER_CACHE_DIR); everything after that is offline.
#   1. vcpkg: the port's portfile run against this tree, post-build checks,
#      a find_package consumer; vcpkg.json against its schema.
#   2. Conan: `conan create` with and without OpenMP, dependencies from a
#      local recipes index of Debian's headers (packaging/conan/index).
#   3. Newest dependencies: the CPU kernel tests (tests/backend/cpu) built
#      against xsimd 14 (pythran 0.19.0 wheel). The library needs no Eigen.
# Usage: scripts/test-packaging.sh [vcpkg|conan|newest]...   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(vcpkg conan newest)
scripts/install-deps.sh
cache="${FASTINFER_CACHE_DIR:-$root/build/cache}"
mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
jobs="$(nproc)"

# A virtual environment with Conan, and the wheel, fetched once (idempotent).
python_tools() {
  if [ ! -x "$cache/venv/bin/conan" ] || ! "$cache/venv/bin/conan" --version | grep -q "2.34.0"; then
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install -q "conan==2.34.0"
  fi
  for wheel in pythran==0.19.0; do
    ls "$cache/wheels/${wheel%%==*}-${wheel##*==}-"*.whl >/dev/null 2>&1 ||
      "$cache/venv/bin/pip" download -q --no-deps --only-binary=:all: "$wheel" -d "$cache/wheels"
  done
}

# unpack WHEEL PREFIX DEST: the wheel's files under PREFIX, into DEST.
unpack() {
  python3 - "$@" <<'PY'
import sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix)]
    if not names:
        sys.exit(f"{wheel} has no {prefix}")
    z.extractall(dest, names)
PY
}

step_vcpkg() {
  cmake -DWORK="$work/vcpkg-openmp" -DFEATURES=openmp -P packaging/vcpkg/test_port.cmake | grep -E "port fastinfer|consumer:"
  cmake -DWORK="$work/vcpkg-core" -P packaging/vcpkg/test_port.cmake | grep -E "port fastinfer|consumer:"
  if cmake -DWORK="$work/vcpkg-cuda" -DFEATURES=cuda -P packaging/vcpkg/test_port.cmake >"$work/cuda.log" 2>&1 ||
     ! grep -q "feature cuda is refused: the CUDA backend" "$work/cuda.log"; then
    echo "vcpkg: the cuda feature was not refused with its message"; cat "$work/cuda.log"; return 1
  fi
  echo "vcpkg: feature cuda refused (the CUDA backend is not packaged yet)"
  # Debian's python3-jsonschema (install-deps.sh), whatever python3 comes first on PATH.
  local py=python3
  python3 -c "import jsonschema" 2>/dev/null || py=/usr/bin/python3
  "$py" packaging/vcpkg/check_manifest.py
}

step_conan() {
  python_tools
  export CONAN_HOME="$work/conan-home"  # fresh: nothing from ~/.conan2 or an earlier run
  local conan="$cache/venv/bin/conan"
  "$conan" profile detect --exist-ok >/dev/null 2>&1
  "$conan" remote disable conancenter >/dev/null  # offline: only the local index below
  "$conan" remote add fastinfer-offline packaging/conan/index --type=local-recipes-index >/dev/null
  local conf=(-c tools.cmake.cmaketoolchain:user_presets= -c tools.cmake.cmaketoolchain:generator=Ninja
              -c "tools.build:jobs=$jobs")
  for omp in True False; do
    "$conan" create packaging/conan --build=missing -o "fastinfer/*:with_openmp=$omp" "${conf[@]}" \
      -c "tools.cmake.cmake_layout:test_folder=$work/conan-test-$omp" >"$work/conan-$omp.log" 2>&1 ||
      { cat "$work/conan-$omp.log"; return 1; }
    grep "(test package): fastinfer" "$work/conan-$omp.log"
  done
  if "$conan" install --requires="fastinfer/$(sed -nE 's/.*FASTINFER_VERSION_STRING "([0-9.]+)".*/\1/p' include/fastinfer/version.hpp)" \
       -o "fastinfer/*:with_cuda=True" --output-folder "$work/conan-cuda" >"$work/conan-cuda.log" 2>&1 ||
     ! grep -q "with_cuda=True is refused: the CUDA backend" "$work/conan-cuda.log"; then
    echo "conan: with_cuda=True was not refused with its message"; cat "$work/conan-cuda.log"; return 1
  fi
  echo "conan: with_cuda=True refused (the CUDA backend is not packaged yet)"
}

step_newest() {
  python_tools
  local deps="$work/deps"
  unpack "$(ls "$cache"/wheels/pythran-0.19.0-*.whl)" pythran/xsimd/ "$deps"
  local xsimd_version
  xsimd_version=$(sed -nE 's/#define XSIMD_VERSION_(MAJOR|MINOR|PATCH) ([0-9]+)/\2/p' \
                  "$deps/pythran/xsimd/config/xsimd_config.hpp" | paste -sd.)
  case "$xsimd_version" in 14.*) ;; *) echo "pythran 0.19.0 carries xsimd $xsimd_version, not 14.x"; return 1;; esac
  cmake -DNAME=xsimd -DVERSION="$xsimd_version" -DTARGET=xsimd -DINCLUDE_DIR="$deps/pythran" \
        -DOUT="$deps/cmake/xsimd" -P packaging/headers_package.cmake
  local build="$work/newest"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release --no-warn-unused-cli \
        -Dxsimd_DIR="$deps/cmake/xsimd" -DCMAKE_DISABLE_FIND_PACKAGE_Eigen3=ON \
        -DFASTINFER_BUILD_BENCHMARKS=OFF -DFASTINFER_BUILD_EXAMPLES=OFF \
        -DFASTINFER_SHARED_INSTANCES=OFF -DFASTINFER_HEADER_CHECK=OFF >"$work/newest-configure.log" ||
    { cat "$work/newest-configure.log"; return 1; }
  local targets=()
  for src in tests/backend/cpu/test_*.cpp; do
    targets+=("backend_cpu_$(basename "$src" .cpp)")
  done
  echo "newest: xsimd $xsimd_version, no Eigen; building ${targets[*]}"
  cmake --build "$build" -j "$jobs" --target "${targets[@]}" >"$work/newest-build.log" 2>&1 ||
    { grep -v "^\[" "$work/newest-build.log" | head -100; return 1; }
  OMP_WAIT_POLICY=passive ctest --test-dir "$build" -L "^backend/cpu$" -j "$jobs" --output-on-failure | tail -3
}

for step in "${steps[@]}"; do
  start=$(date +%s)
  echo "== $step"
  "step_$step"
  echo "== $step done in $(( $(date +%s) - start )) s"
done
