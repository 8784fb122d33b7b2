#!/usr/bin/env bash
# Runs on the device machine from a bundle made by scripts/device_bundle.sh (copied there as
# .bundle/run.sh): the GPU test programs, then the kernel benchmark, then compute-sanitizer
# memcheck and racecheck on the test programs (when /usr/local/cuda/bin/compute-sanitizer
# exists). Logs go to $OUT (default: ./device-out), at most 5 files:
#   env.log (nvidia-smi, versions), tests.log, service.log (the gRPC integration suite against
#   hyla-server --device=cuda), bench.log, memcheck.log, racecheck.log
# and a summary is printed last. Exit status: 1 if a test or a sanitizer run failed.
#
# Usage: bash .bundle/run.sh [--quick] [--no-sanitizers] [--no-bench] [--no-service]
# Environment: HYLA_GPU_TESTS (space-separated test programs to run, default: all),
#              HYLA_TEST_TIMEOUT (seconds per test program, default 300),
#              HYLA_SERVICE_FILTER (gtest filter of the gRPC suite), HYLA_SANITIZER_PROGRAMS (space-separated program names for the sanitizer runs,
#              default: every *_gpu_test), HYLA_MEMCHECK_FILTER (gtest filter, default: all
#              tests), HYLA_RACECHECK_FILTER (default '*Sanitizer*': the small instances of every
#              kernel path, since racecheck runs the full suites too slowly),
#              HYLA_SANITIZER_TIMEOUT (seconds per program and tool, default 150),
#              HYLA_COMPUTE_SANITIZER (default /usr/local/cuda/bin/compute-sanitizer).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f "${HERE}/payload.tar.xz" && ! -d "${HERE}/bin" ]]; then
  tar -C "${HERE}" -xJf "${HERE}/payload.tar.xz" || { echo "cannot unpack the bundle" >&2; exit 1; }
fi
OUT="${OUT:-${PWD}/device-out}"
mkdir -p "${OUT}"
QUICK=0
SANITIZE=1
BENCH=1
SERVICE=1
for arg in "$@"; do
  case "${arg}" in
    --quick) QUICK=1 ;;
    --no-sanitizers) SANITIZE=0 ;;
    --no-bench) BENCH=0 ;;
    --no-service) SERVICE=0 ;;
    *) echo "device_run.sh: unknown argument ${arg}" >&2; exit 2 ;;
  esac
done
export LD_LIBRARY_PATH="${HERE}/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
export PATH="${HERE}/bin:${PATH}"
# The fixtures and the default model travel in the bundle / the working tree.
[[ -d "${HERE}/golden" ]] && export HYLA_GOLDEN_DIR="${HERE}/golden"
REPO="$(cd "${HERE}/.." && pwd)"
[[ -d "${REPO}/models/default" ]] && export HYLA_DEFAULT_MODEL="${REPO}/models/default"
MEMCHECK_FILTER="${HYLA_MEMCHECK_FILTER:-*}"
RACECHECK_FILTER="${HYLA_RACECHECK_FILTER:-*Sanitizer*}"
SAN_TIMEOUT="${HYLA_SANITIZER_TIMEOUT:-150}"
SANITIZER="${HYLA_COMPUTE_SANITIZER:-/usr/local/cuda/bin/compute-sanitizer}"
summary=()
failed=0

{
  date -u
  nvidia-smi || true
  uname -a
  [[ -x /usr/local/cuda/bin/nvcc ]] && /usr/local/cuda/bin/nvcc --version
  [[ -x "${SANITIZER}" ]] && "${SANITIZER}" --version
} >"${OUT}/env.log" 2>&1

# 1. GPU tests.
: >"${OUT}/tests.log"
for t in "${HERE}"/bin/*_gpu_test; do
  name="$(basename "${t}")"
  if [[ -n "${HYLA_GPU_TESTS:-}" && " ${HYLA_GPU_TESTS} " != *" ${name} "* ]]; then continue; fi
  echo "===== ${name}" >>"${OUT}/tests.log"
  start=${SECONDS}
  timeout "${HYLA_TEST_TIMEOUT:-300}" "${t}" --gtest_color=no >>"${OUT}/tests.log" 2>&1
  rc=$?
  if ((rc == 0)); then
    summary+=("tests     ${name}: PASS ($((SECONDS - start)) s)")
  else
    summary+=("tests     ${name}: FAIL rc=${rc} ($((SECONDS - start)) s)")
    failed=1
  fi
done
grep -h '^\[gpu-error\]' "${OUT}/tests.log" >"${OUT}/errors.txt" || true

# 1b. The gRPC integration suite against hyla-server --device=cuda --precision=fp32: the suite
# pins the CPU's exact numerics and fp32 byte sizes (bitwise session continuation, memory plans
# in fp32 KV blocks), which the bf16 serving precision changes by design (the Python-client tests need
# python3-grpcio and the metrics test promtool, which the device lacks; they run in CI on the
# CPU).
if ((SERVICE)) && compgen -G "${HERE}/svc/*" >/dev/null; then
  : >"${OUT}/service.log"
  for t in "${HERE}"/svc/*; do
    name="$(basename "${t}")"
    echo "===== ${name} (--device=cuda)" >>"${OUT}/service.log"
    start=${SECONDS}
    HYLA_TEST_SERVER_BIN="${HERE}/bin/hyla-server" HYLA_TEST_CLI_BIN="${HERE}/bin/hyla" \
      HYLA_TEST_SOURCE_DIR="${REPO}" HYLA_TEST_SERVER_ARGS="${HYLA_TEST_SERVER_ARGS:---device=cuda --precision=fp32}" \
      timeout "${HYLA_SERVICE_TIMEOUT:-240}" "${t}" --gtest_color=no \
      --gtest_filter="${HYLA_SERVICE_FILTER:--*Python*:*Promtool*}" >>"${OUT}/service.log" 2>&1
    rc=$?
    if ((rc == 0)); then
      summary+=("service   ${name}: PASS ($((SECONDS - start)) s)")
    else
      summary+=("service   ${name}: FAIL rc=${rc} ($((SECONDS - start)) s)")
      failed=1
    fi
  done
fi

# 2. Benchmark.
if ((BENCH)) && [[ -x "${HERE}/bin/kernels_bench" ]]; then
  start=${SECONDS}
  if ((QUICK)); then
    "${HERE}/bin/kernels_bench" --quick >"${OUT}/bench.log" 2>&1
  else
    "${HERE}/bin/kernels_bench" >"${OUT}/bench.log" 2>&1
  fi
  rc=$?
  summary+=("bench     kernels_bench: rc=${rc} ($((SECONDS - start)) s)")
  ((rc == 0)) || failed=1
fi

# 3. compute-sanitizer on the test programs.
if ((SANITIZE)); then
  if [[ -x "${SANITIZER}" ]]; then
    for tool in memcheck racecheck; do
      : >"${OUT}/${tool}.log"
      if [[ "${tool}" == memcheck ]]; then FILTER="${MEMCHECK_FILTER}"; else FILTER="${RACECHECK_FILTER}"; fi
      for t in "${HERE}"/bin/*_gpu_test; do
        name="$(basename "${t}")"
        if [[ -n "${HYLA_SANITIZER_PROGRAMS:-}" && " ${HYLA_SANITIZER_PROGRAMS} " != *" ${name} "* ]]; then
          continue
        fi
        # A program without tests matching the filter runs whole under memcheck (racecheck
        # only runs the small cases).
        PFILTER="${FILTER}"
        if ! "${t}" --gtest_list_tests --gtest_filter="${FILTER}" | grep -q '^  '; then
          [[ "${tool}" == racecheck ]] && { summary+=("${tool} ${name}: no ${FILTER} cases"); continue; }
          PFILTER='*'
        fi
        echo "===== ${name} (${tool}, filter ${PFILTER})" >>"${OUT}/${tool}.log"
        start=${SECONDS}
        run_log="$(mktemp)"
        timeout "${SAN_TIMEOUT}" "${SANITIZER}" --tool "${tool}" --error-exitcode 99 \
          "${t}" --gtest_color=no --gtest_brief=1 --gtest_filter="${PFILTER}" >"${run_log}" 2>&1
        rc=$?
        cat "${run_log}" >>"${OUT}/${tool}.log"
        errs="$(grep -E '(ERROR|RACECHECK|Error) SUMMARY' "${run_log}" | tail -n 1)"
        rm -f "${run_log}"
        case ${rc} in
          0) summary+=("${tool} ${name}: clean ($((SECONDS - start)) s) ${errs}") ;;
          124) summary+=("${tool} ${name}: TIMEOUT after ${SAN_TIMEOUT} s ${errs}") ;;
          *) summary+=("${tool} ${name}: FAIL rc=${rc} ($((SECONDS - start)) s) ${errs}"); failed=1 ;;
        esac
      done
    done
  else
    summary+=("sanitizers: ${SANITIZER} not found, not run")
  fi
fi

echo
echo "---- observed errors per kernel"
cat "${OUT}/errors.txt"
echo "---- benchmark"
[[ -f "${OUT}/bench.log" ]] && tail -n 20 "${OUT}/bench.log"
echo "---- summary"
printf '%s\n' "${summary[@]}"
exit ${failed}
