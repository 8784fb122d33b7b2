#!/usr/bin/env bash
# Builds the GPU test programs and the kernel benchmark here for sm_90 (build-cuda/, with
# -DHYLA_CUDA=ON) and bundles them, with the shared libraries they need, into .bundle/ (ignored
# by git) for the device machine:
#
#   .bundle/bin/   the GPU test programs (*_gpu_test) and kernels_bench
#   .bundle/lib/   their shared libraries (ldd), minus the ones the device has: libc, libm,
#                  libpthread, libdl, librt, ld-linux, libcuda, libcublas*
#   .bundle/run.sh scripts/device_run.sh: runs the GPU tests, compute-sanitizer memcheck and
#                  racecheck on them (when /usr/local/cuda/bin/compute-sanitizer exists) and the
#                  benchmark, writing logs to $OUT
#   .bundle/bench.sh scripts/device_bench.sh: issue 5's benchmarks (kernels_bench, the fla and
#                  PyTorch SDPA peers, hyla-context-scaling over three model pairs, plots), with
#                  .bundle/peers/, .bundle/plot_results.py and .bundle/whl/ (the fla-core wheel
#                  from the ignored .peers-whl/; docs/performance.md has the pip download line)
#
# Then, through the device tool (carry [".bundle"]):
#   bash .bundle/run.sh
#   bash .bundle/bench.sh
#
# Usage: scripts/device_bundle.sh [--build-dir DIR] [--jobs N] [--no-build]
# Environment: HYLA_JOBS (default 2).
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
BUILD="${ROOT}/build-cuda"
JOBS="${HYLA_JOBS:-2}"
BUILD_IT=1
while (($#)); do
  case "$1" in
    --build-dir) BUILD="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --no-build) BUILD_IT=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_bundle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The programs to bundle: every GPU test program that this tree defines, the benchmark, the
# server, its clients and the gRPC integration tests (run there with --device=cuda).
GPU_TESTS=(kernels_gpu_test gdn_kernels_gpu_test paged_attention_gpu_test cuda_backend_gpu_test
           attention_kernels_gpu_test gdn_layer_kernels_gpu_test natsl_kernels_gpu_test
           nha_kernels_gpu_test sampling_kernels_gpu_test)
PROGRAMS=(kernels_bench hyla-server hyla hyla-model)
SERVICE_TESTS=(generate_integration_test lifecycle_integration_test operations_integration_test
               validation_integration_test session_affinity_test)
# Issue 5's benchmark driver (scripts/device_bench.sh) also runs hyla-context-scaling.
PROGRAMS+=(hyla-context-scaling)
# Its serving stage drives hyla-server with the gRPC load generator; hyla-serving-overhead is the
# engine + gRPC path over a fixed-time fake backend (docs/benchmarks.md).
PROGRAMS+=(hyla-bench hyla-serving-overhead)
TARGETS=("${GPU_TESTS[@]}" "${PROGRAMS[@]}" "${SERVICE_TESTS[@]}")

if ((BUILD_IT)); then
  cmake -S "${ROOT}" -B "${BUILD}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHYLA_CUDA=ON \
    -DHYLA_CUDA_ARCHITECTURES=90 -DHYLA_BUILD_SERVICE=ON >/dev/null
  ninja -C "${BUILD}" -j"${JOBS}" "${TARGETS[@]}"
fi

BUNDLE="${ROOT}/.bundle"
rm -rf "${BUNDLE}"
mkdir -p "${BUNDLE}/bin" "${BUNDLE}/lib" "${BUNDLE}/svc"
for t in "${TARGETS[@]}"; do
  bin="$(find "${BUILD}" -type f -name "${t}" -perm -u+x | head -n 1)"
  if [[ -z "${bin}" ]]; then
    echo "device_bundle.sh: ${t} was not built in ${BUILD}" >&2
    exit 1
  fi
  case " ${SERVICE_TESTS[*]} " in
    *" ${t} "*) cp "${bin}" "${BUNDLE}/svc/" ;;
    *) cp "${bin}" "${BUNDLE}/bin/" ;;
  esac
done
# The golden fixtures (../shared is not part of the working tree that travels to the device).
# (promtool is not bundled: 47 MB against the 64 MiB carry limit; the promtool test runs in CI.)
GOLDEN="${ROOT}/../shared/golden"
if [[ -d "${GOLDEN}" ]]; then
  mkdir -p "${BUNDLE}/golden"
  for fam in "${GOLDEN}"/*/; do
    f="$(basename "${fam}")"
    mkdir -p "${BUNDLE}/golden/${f}"
    cp "${fam}"*.json "${fam}"*.safetensors "${BUNDLE}/golden/${f}/" 2>/dev/null || true
  done
fi

# Shared libraries: everything ldd resolves, minus what the device machine provides.
skip_lib() {
  case "$1" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libcublas*) return 0 ;;
    linux-vdso*) return 0 ;;
  esac
  return 1
}
for bin in "${BUNDLE}"/bin/* "${BUNDLE}"/svc/*; do
  while read -r name _ path _; do
    [[ -n "${path:-}" && "${path}" == /* ]] || continue
    skip_lib "${name}" && continue
    [[ -e "${BUNDLE}/lib/${name}" ]] || cp -L "${path}" "${BUNDLE}/lib/${name}"
  done < <(ldd "${bin}" | grep '=>')
done

cp "${SCRIPT_DIR}/device_run.sh" "${BUNDLE}/run.sh"
chmod +x "${BUNDLE}/run.sh"
# Issue 5's benchmarks (outside the payload, which bench.sh unpacks like run.sh): the driver,
# the peers harness, the plotter and the fla-core wheel.
cp "${SCRIPT_DIR}/device_bench.sh" "${BUNDLE}/bench.sh"
chmod +x "${BUNDLE}/bench.sh"
# The per-kernel breakdown of a decode step (Nsight Compute).
cp "${SCRIPT_DIR}/device_profile.sh" "${BUNDLE}/profile.sh"
chmod +x "${BUNDLE}/profile.sh"
mkdir -p "${BUNDLE}/peers" "${BUNDLE}/whl"
cp "${ROOT}/bench/peers/peers_bench.py" "${BUNDLE}/peers/"
cp "${ROOT}/bench/plot_results.py" "${BUNDLE}/"
if compgen -G "${ROOT}/.peers-whl/*.whl" >/dev/null; then
  cp "${ROOT}"/.peers-whl/*.whl "${BUNDLE}/whl/"
else
  echo "device_bundle.sh: no wheel in .peers-whl/: bench.sh's fla rows will fail" \
    "(docs/performance.md: pip download)" >&2
fi
ls "${BUNDLE}/bin" "${BUNDLE}/svc" "${BUNDLE}/lib"
echo "bundle: $(du -sh "${BUNDLE}" | cut -f1) unpacked"
# The device tool carries at most 64 MiB: pack everything but run.sh, which unpacks it there.
# -9 on one thread: its 64 MiB dictionary spans whole programs, so the kernel images that every
# statically linked program repeats are stored about once (209 MB → 21 MB instead of 52 MB).
XZ_OPT="-9 -T1" tar -C "${BUNDLE}" -cJf "${BUNDLE}/payload.tar.xz" bin lib svc $([[ -d "${BUNDLE}/golden" ]] && echo golden)
rm -rf "${BUNDLE}/bin" "${BUNDLE}/lib" "${BUNDLE}/svc" "${BUNDLE}/golden"
echo "bundle: $(du -sh "${BUNDLE}" | cut -f1) packed in ${BUNDLE}"
