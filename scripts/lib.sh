# Shared by scripts/run, scripts/test and scripts/gpu: install what is missing (Debian
# packages), find the CUDA toolkit, configure and build. Sourced, not executed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FLASHCORE_BUILD_DIR:-$ROOT/build}"
JOBS="${FLASHCORE_JOBS:-$(nproc)}"

ensure_tools() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v ninja >/dev/null || missing+=(ninja-build)
  command -v g++ >/dev/null || missing+=(g++)
  command -v git >/dev/null || missing+=(git)
  if [ ! -f /usr/include/gtest/gtest.h ] && [ ! -f /usr/src/googletest/CMakeLists.txt ] &&
     [ -z "${FLASHCORE_GTEST_SOURCE_DIR:-}" ]; then
    missing+=(libgtest-dev googletest)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "missing packages: ${missing[*]} (run as root or install them)" >&2
      exit 1
    fi
    echo "installing: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  if ! command -v nvcc >/dev/null; then
    for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do
      [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
    done
  fi
  command -v nvcc >/dev/null || { echo "CUDA toolkit not found (nvcc): install CUDA 13" >&2; exit 1; }
}

configure_and_build() {
  local extra=()
  [ -n "${FLASHCORE_GTEST_SOURCE_DIR:-}" ] && extra+=("-DFLASHCORE_GTEST_SOURCE_DIR=$FLASHCORE_GTEST_SOURCE_DIR")
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${extra[@]}" "$@" >/dev/null
  local start end
  start=$(date +%s)
  cmake --build "$BUILD" -j "$JOBS" 2>&1 | tee "$BUILD/build.log"
  # ptxas reports serialised wgmma (C7510-C7520) as info, not as a warning, so
  # --warning-as-error misses it: any such line is a defect of the Hopper kernels.
  if grep -q "(C75[0-9][0-9])" "$BUILD/build.log"; then
    echo "ptxas serialised wgmma instructions (C75xx above)" >&2
    exit 1
  fi
  end=$(date +%s)
  echo "build: $((end - start)) s with $JOBS jobs (incremental builds are faster)"
}

ensure_python_test_deps() {
  if ! python3 -c "import numpy, pytest, nanobind, scikit_build_core" 2>/dev/null; then
    echo "installing Python test and build dependencies (tests/python/requirements.txt)"
    python3 -m pip install -q -r "$ROOT/tests/python/requirements.txt"
  fi
}
