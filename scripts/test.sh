#!/usr/bin/env bash
# Runs every check of hyla, the same way locally and in CI (.ci/run calls
# `scripts/setup.sh && scripts/test.sh`). Stages, in the order they run:
#
#   deps     scripts/check_deps.sh: its self-test, then the DESIGN.md dependency rules
#   format   scripts/check_format.sh: clang-format-14 over the tracked sources
#   release  Release build in build/ (the one scripts/setup.sh made), then ctest of the `unit` and
#            `integration` labels (a test with neither label, nor `gpu`, fails the stage: it would
#            never run)
#   asan     ASan+UBSan Debug build in build-asan/ (CPU only), then ctest of the `unit` label with
#            ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
#   cuda     where nvcc exists: every CUDA target (hyla_all_cuda) compiled for
#            HYLA_CUDA_ARCHITECTURES (sm_90) with -DHYLA_CUDA=ON; reuses build/ when it already
#            has CUDA, else build-cuda/. Skipped without nvcc. (No GPU tests run here.)
#
# A failing stage does not stop the later ones. Prints one summary line per stage and ends with
# `N passed, N failed`; exits 1 if any stage failed.
#
# Usage: scripts/test.sh [--only STAGE,...] [--skip STAGE,...] [--jobs N]
#                        [--build-dir DIR] [--asan-dir DIR] [--cuda-dir DIR]
#   --jobs N   parallel compile and test jobs (default: $HYLA_JOBS or 2, the CI machine's cores)
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

all_stages=(deps format release asan cuda)
only=""
skip=""
jobs="${HYLA_JOBS:-2}"
build_dir="${ROOT}/build"
asan_dir="${ROOT}/build-asan"
cuda_dir="${ROOT}/build-cuda"

need_arg() { [[ $# -ge 2 ]] || { echo "test: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) need_arg "$@"; only="$2"; shift ;;
    --skip) need_arg "$@"; skip="$2"; shift ;;
    --jobs) need_arg "$@"; jobs="$2"; shift ;;
    --build-dir) need_arg "$@"; build_dir="$2"; shift ;;
    --asan-dir) need_arg "$@"; asan_dir="$2"; shift ;;
    --cuda-dir) need_arg "$@"; cuda_dir="$2"; shift ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "$0" | sed -e '/^set -uo/d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "test: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for s in ${only//,/ } ${skip//,/ }; do
  [[ " ${all_stages[*]} " == *" ${s} "* ]] || { echo "test: unknown stage '${s}'" >&2; exit 2; }
done

find_nvcc() {
  if command -v nvcc >/dev/null; then
    command -v nvcc
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    echo /usr/local/cuda/bin/nvcc
  fi
}

# configure DIR ARGS...: configures DIR with ARGS unless it already has a cache (then keeps it).
configure() {
  local dir="$1"
  shift
  if [[ -f "${dir}/CMakeCache.txt" ]]; then
    cmake -S "${ROOT}" -B "${dir}" >/dev/null
  else
    cmake -S "${ROOT}" -B "${dir}" -G Ninja "$@"
  fi
}

stage_deps() {
  "${SCRIPT_DIR}/check_deps.sh" --self-test && "${SCRIPT_DIR}/check_deps.sh"
}

stage_format() {
  "${SCRIPT_DIR}/check_format.sh"
}

# Fails if ctest in DIR knows tests that carry none of the labels unit, integration, gpu.
check_labels() {
  local dir="$1" unlabelled
  unlabelled="$(cd "${dir}" && ctest -N -LE '^(unit|integration|gpu)$' | grep -E '^ *Test +#' || true)"
  if [[ -n "${unlabelled}" ]]; then
    echo "tests without a unit/integration/gpu label (they would never run):"
    printf '%s\n' "${unlabelled}"
    return 1
  fi
}

stage_release() {
  configure "${build_dir}" -DCMAKE_BUILD_TYPE=Release || return 1
  cmake --build "${build_dir}" -j "${jobs}" || return 1
  check_labels "${build_dir}" || return 1
  (cd "${build_dir}" &&
    ctest -L '^(unit|integration)$' --output-on-failure --no-tests=error --timeout 600 -j "${jobs}")
}

stage_asan() {
  configure "${asan_dir}" -DCMAKE_BUILD_TYPE=Debug -DHYLA_SANITIZE=ON -DHYLA_CUDA=OFF || return 1
  cmake --build "${asan_dir}" -j "${jobs}" || return 1
  (cd "${asan_dir}" &&
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest -L '^unit$' --output-on-failure --no-tests=error --timeout 900 -j "${jobs}")
}

stage_cuda() {
  local nvcc dir
  nvcc="$(find_nvcc)"
  if [[ -z "${nvcc}" ]]; then
    echo "nvcc not found: skipping the CUDA compile check"
    return 3
  fi
  echo "nvcc: ${nvcc}"
  # Reuse the release tree when it already builds the CUDA targets; otherwise a CUDA-only tree
  # (without the gRPC service) in which only the CUDA targets are built.
  if [[ -f "${build_dir}/build.ninja" ]] && grep -q 'build hyla_all_cuda:' "${build_dir}/build.ninja"; then
    dir="${build_dir}"
  else
    dir="${cuda_dir}"
    configure "${dir}" -DCMAKE_BUILD_TYPE=Release -DHYLA_CUDA=ON -DHYLA_BUILD_SERVICE=OFF \
      -DCMAKE_CUDA_COMPILER="${nvcc}" || return 1
  fi
  echo "building hyla_all_cuda in ${dir}"
  cmake --build "${dir}" --target hyla_all_cuda -j "${jobs}"
}

describe() {
  case "$1" in
    deps) echo "dependency rules (check_deps.sh + self-test)" ;;
    format) echo "clang-format-14 (check_format.sh)" ;;
    release) echo "Release build + ctest unit,integration" ;;
    asan) echo "ASan+UBSan build + ctest unit" ;;
    cuda) echo "CUDA compile check (hyla_all_cuda, -DHYLA_CUDA=ON)" ;;
  esac
}

passed=0
failed=0
summary=()
total_start=$SECONDS
for s in "${all_stages[@]}"; do
  if [[ -n "${only}" && ",${only}," != *",${s},"* ]] || [[ ",${skip}," == *",${s},"* ]]; then
    summary+=("$(printf '%-8s SKIPPED  %5s   %s (not selected)' "${s}" "" "$(describe "${s}")")")
    continue
  fi
  echo
  echo "==> ${s}: $(describe "${s}")"
  start=$SECONDS
  "stage_${s}"
  rc=$?
  secs=$((SECONDS - start))
  if [[ ${rc} -eq 0 ]]; then
    result=PASSED
    passed=$((passed + 1))
  elif [[ ${rc} -eq 3 && "${s}" == cuda ]]; then
    result=SKIPPED
  else
    result=FAILED
    failed=$((failed + 1))
  fi
  line="$(printf '%-8s %-8s %4ds   %s' "${s}" "${result}" "${secs}" "$(describe "${s}")")"
  echo "--- ${line}"
  summary+=("${line}")
done

echo
echo "==> summary (total $((SECONDS - total_start)) s)"
printf '%s\n' "${summary[@]}"
echo "${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
