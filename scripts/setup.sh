#!/usr/bin/env bash
# Sets up a Debian 12 (bookworm) machine for hyla and builds it.
#
#   1. Installs the Debian packages hyla needs (only the missing ones; `apt-get update` runs once,
#      and only when something is missing). Runs apt as root, through sudo when not root.
#   2. Looks for nvcc (PATH, /usr/local/cuda/bin). CUDA itself is never installed: without it the
#      CPU backend is built and the CUDA kernels are skipped.
#   3. Configures and builds hyla (Release, Ninja) in build/ unless --no-build.
#
# Idempotent: a second run installs nothing and rebuilds only what changed.
#
# Usage: scripts/setup.sh [--no-build] [--build-dir DIR] [--jobs N]
#   --no-build       install packages only
#   --build-dir DIR  build directory (default: build/ in the repository)
#   --jobs N         parallel compile jobs (default: $HYLA_JOBS or 2)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

build=1
build_dir="${ROOT}/build"
jobs="${HYLA_JOBS:-2}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) build=0 ;;
    --build-dir)
      [[ $# -ge 2 ]] || { echo "setup: --build-dir needs a directory" >&2; exit 2; }
      build_dir="$2"
      shift
      ;;
    --jobs)
      [[ $# -ge 2 ]] || { echo "setup: --jobs needs a number" >&2; exit 2; }
      jobs="$2"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "setup: unknown argument '$1' (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

# Every Debian package the project needs, with what it is for.
packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git
  # runtime/: Abseil
  libabsl-dev
  # tests/ and bench/
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  # service/: gRPC, protobuf, Prometheus metrics, JSON
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler prometheus-cpp-dev
  nlohmann-json3-dev
  # scripts/check_format.sh
  clang-format-14 clang-format
  # Python clients and test helpers
  python3 python3-numpy python3-grpcio python3-protobuf
  # promtool (metrics format checks); curl for the README's /metrics example
  prometheus curl
  # tests/deploy: the Python venv of the deployment checks (below)
  python3-venv
)

log() { printf 'setup: %s\n' "$*"; }

# --- 1. packages -------------------------------------------------------------------------------
missing=()
for p in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Abbrev}' "${p}" 2>/dev/null || true)"
  [[ "${status}" == ii* ]] || missing+=("${p}")
done

if ((${#missing[@]} == 0)); then
  log "all ${#packages[@]} Debian packages are installed"
else
  log "installing ${#missing[@]} missing Debian package(s): ${missing[*]}"
  if ! command -v apt-get >/dev/null; then
    echo "setup: apt-get not found: this script supports Debian 12 (bookworm)" >&2
    exit 1
  fi
  if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null; then
    as_root=(sudo)
  else
    echo "setup: not root and sudo is not available; install as root: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}"
  log "packages installed"
fi

# --- 1b. deployment-check venv -------------------------------------------------------------------
# tests/deploy runs in build/deploy-venv with the pinned PyPI packages of
# tests/deploy/requirements.txt (kubernetes-validate, kubectl, envoy-data-plane, ...). Recreated
# only when the requirements change. HYLA_SKIP_DEPLOY_VENV=1 skips it (container builds).
if [[ "${HYLA_SKIP_DEPLOY_VENV:-0}" != 1 && -f "${ROOT}/tests/deploy/requirements.txt" ]]; then
  venv="${ROOT}/build/deploy-venv"
  stamp="${venv}/.requirements.sha256"
  want="$(sha256sum "${ROOT}/tests/deploy/requirements.txt" | cut -d' ' -f1)"
  if [[ -x "${venv}/bin/python3" && -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
    log "deploy venv up to date: ${venv}"
  else
    log "creating the deploy venv ${venv} (tests/deploy/requirements.txt)"
    rm -rf "${venv}"
    python3 -m venv "${venv}"
    # Non-fatal: without PyPI the deploy checks fail by name, every other test still runs.
    if "${venv}/bin/python3" -m pip install --quiet --disable-pip-version-check \
      -r "${ROOT}/tests/deploy/requirements.txt"; then
      echo "${want}" >"${stamp}"
    else
      log "WARNING: could not install tests/deploy/requirements.txt from PyPI: the deploy checks will fail"
    fi
  fi
fi

# --- 2. CUDA -----------------------------------------------------------------------------------
nvcc=""
if command -v nvcc >/dev/null; then
  nvcc="$(command -v nvcc)"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
fi
if [[ -n "${nvcc}" ]]; then
  log "CUDA: found ${nvcc} ($("${nvcc}" --version | grep -o 'release [0-9.]*' || echo 'unknown version')): the CUDA kernels will be built"
else
  log "CUDA: nvcc not found (not installed by this script): building the CPU backend only"
fi

# --- 3. build ----------------------------------------------------------------------------------
if ((build == 0)); then
  log "--no-build: done"
  exit 0
fi

cmake_args=(-S "${ROOT}" -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release)
if [[ -n "${nvcc}" ]]; then
  cmake_args+=(-DCMAKE_CUDA_COMPILER="${nvcc}")
fi
if [[ -f "${build_dir}/CMakeCache.txt" ]]; then
  log "configuring ${build_dir} (existing cache kept)"
  cmake -S "${ROOT}" -B "${build_dir}"
else
  log "configuring ${build_dir} (Release)"
  cmake "${cmake_args[@]}"
fi
log "building with ${jobs} job(s)"
start=$SECONDS
cmake --build "${build_dir}" -j "${jobs}"
log "build done in $((SECONDS - start)) s: ${build_dir}"
