#!/usr/bin/env bash
# Checks the dependency rules of DESIGN.md over the git-tracked files of the repository:
#
#   1. runtime/ includes only runtime/, Abseil (absl/) and standard C/C++/POSIX headers;
#      runtime/cuda/ may also include "kernels/ops.h" and CUDA toolkit headers.
#   2. kernels/ (*.cu, *.cuh, *.h) includes only kernels/, CUDA toolkit and standard headers:
#      nvcc never sees Abseil, protobuf or gRPC.
#   3. Only service/ (and its tests, tests/service/, and the gRPC load generator bench/hyla_bench*)
#      includes grpcpp/, grpc/, google/protobuf/,
#      prometheus/ or generated *.pb.h headers.
#   4. CMake files never use file(GLOB ...): sources are listed explicitly.
#
# Project headers are included by their path from the repository root ("runtime/base/check.h"),
# so a bare "ops.h" inside runtime/ is a violation too.
#
# Usage: scripts/check_deps.sh [--root DIR]   check the tracked files of DIR (default: this repo)
#        scripts/check_deps.sh --self-test     run the checker against a deliberately bad tree
# Prints one line per violation (file:line: rule: text) and exits 1 if there is any.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

# check_tree DIR: prints violations, returns 1 if there are any.
check_tree() {
  local root="$1"
  local -a cxx_files cmake_files
  mapfile -t cxx_files < <(git -C "${root}" ls-files -- '*.h' '*.hpp' '*.cc' '*.cpp' '*.cu' '*.cuh')
  mapfile -t cmake_files < <(git -C "${root}" ls-files -- 'CMakeLists.txt' '*/CMakeLists.txt' '*.cmake')

  local out=""
  if ((${#cxx_files[@]})); then
    # "path:line:#include <h>" for every include line, then classified by awk.
    out+="$(cd "${root}" && grep -HnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]' \
        -- "${cxx_files[@]}" | awk -F: -f <(include_rules_awk) || true)"
  fi
  if ((${#cmake_files[@]})); then
    local globs
    globs="$(cd "${root}" && grep -HniE 'file[[:space:]]*\([[:space:]]*GLOB' -- "${cmake_files[@]}" |
      awk -F: '{ text = $0; sub(/^[^:]*:[^:]*:/, "", text); code = text; sub(/#.*/, "", code);
                 if (tolower(code) ~ /file[ \t]*\([ \t]*glob/)
                   printf "%s:%s: CMake must list sources explicitly, never file(GLOB): %s\n",
                          $1, $2, text }' || true)"
    [[ -n "${globs}" ]] && out+="${out:+$'\n'}${globs}"
  fi
  if [[ -n "${out}" ]]; then
    printf '%s\n' "${out}"
    return 1
  fi
  return 0
}

include_rules_awk() {
  cat <<'AWK'
BEGIN {
  n = split("algorithm any array atomic bitset cassert cctype cerrno cfenv cfloat charconv " \
            "chrono cinttypes climits clocale cmath codecvt complex condition_variable csetjmp " \
            "csignal cstdarg cstddef cstdint cstdio cstdlib cstring ctime cuchar cwchar cwctype " \
            "deque exception execution filesystem forward_list fstream functional future " \
            "initializer_list iomanip ios iosfwd iostream istream iterator limits list locale " \
            "map memory memory_resource mutex new numeric optional ostream queue random ratio " \
            "regex scoped_allocator set shared_mutex sstream stack stdexcept streambuf string " \
            "string_view system_error thread tuple type_traits typeindex typeinfo " \
            "unordered_map unordered_set utility valarray variant vector " \
            "assert.h ctype.h errno.h fenv.h float.h inttypes.h limits.h locale.h math.h " \
            "setjmp.h signal.h stdarg.h stddef.h stdint.h stdio.h stdlib.h string.h time.h " \
            "wchar.h wctype.h unistd.h fcntl.h pthread.h dirent.h dlfcn.h sched.h poll.h " \
            "netdb.h strings.h endian.h byteswap.h execinfo.h cxxabi.h cpuid.h " \
            "immintrin.h x86intrin.h xmmintrin.h emmintrin.h pmmintrin.h tmmintrin.h " \
            "smmintrin.h nmmintrin.h avxintrin.h avx2intrin.h f16cintrin.h fmaintrin.h", std_list, " ")
  for (i = 1; i <= n; i++) STD[std_list[i]] = 1
  n = split("cuda.h cuda_runtime.h cuda_runtime_api.h cuda_bf16.h cuda_fp16.h cuda_fp8.h " \
            "cuda_pipeline.h cuda_awbarrier.h cooperative_groups.h mma.h " \
            "device_launch_parameters.h vector_types.h vector_functions.h driver_types.h " \
            "library_types.h math_constants.h cublas_v2.h cublasLt.h curand.h " \
            "curand_kernel.h", cuda_list, " ")
  for (i = 1; i <= n; i++) CUDA[cuda_list[i]] = 1
}
function is_std(h, angle) {
  return angle && ((h in STD) || h ~ /^(sys|netinet|arpa|linux)\//)
}
function is_absl(h) { return h ~ /^absl\// }
function is_cuda(h) {
  return (h in CUDA) || h ~ /^(cub|cuda|thrust|nvtx3|cooperative_groups)\//
}
function is_service_only(h) {
  return h ~ /^(grpcpp|grpc|grpc\+\+|google\/protobuf|prometheus)\// || h ~ /\.pb\.h$/
}
{
  file = $1; line = $2
  text = $0; sub(/^[^:]*:[^:]*:/, "", text)
  inc = text; sub(/^[ \t]*#[ \t]*include[ \t]*/, "", inc)
  angle = substr(inc, 1, 1) == "<"
  h = substr(inc, 2); sub(/[>"].*$/, "", h)
  gsub(/[ \t]+$/, "", text)

  rule = ""
  if (file ~ /^runtime\//) {
    ok = (!angle && h ~ /^runtime\//) || is_absl(h) || is_std(h, angle)
    if (file ~ /^runtime\/cuda\//)
      ok = ok || h == "kernels/ops.h" || is_cuda(h)
    if (!ok) {
      if (file ~ /^runtime\/cuda\//)
        rule = "runtime/cuda/ may include only runtime/, absl/, kernels/ops.h, CUDA and standard headers"
      else
        rule = "runtime/ may include only runtime/, absl/ and standard headers"
    }
  } else if (file ~ /^kernels\// && file ~ /\.(cu|cuh|h)$/) {
    if (!((!angle && h ~ /^kernels\//) || is_cuda(h) || is_std(h, angle)))
      rule = "kernels/ may include only kernels/, CUDA and standard headers"
  }
  if (rule == "" && is_service_only(h) && file !~ /^(service|tests\/service)\// &&
      file !~ /^bench\/hyla_bench[^\/]*$/)
    rule = "only service/ may include gRPC, protobuf, prometheus-cpp or *.pb.h headers"
  if (rule != "") printf "%s:%s: %s: %s\n", file, line, rule, text
}
AWK
}

# Builds a small git tree with known good and bad files and checks that exactly the bad lines
# are reported (and that an all-good tree passes).
self_test() {
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "${tmp}"' RETURN
  local bad="${tmp}/bad" good="${tmp}/good"
  mkdir -p "${bad}"/{runtime/cuda,runtime/base,kernels,service,tools,tests/service,cmake}
  git -C "${bad}" init -q

  # Good files: nothing in them may be reported.
  printf '%s\n' '#include "runtime/base/check.h"' '#include <vector>' '#include <sys/mman.h>' \
    '#include "absl/status/status.h"' '#include <immintrin.h>' '  #  include <cstdint>' \
    >"${bad}/runtime/base/ok.cc"
  printf '%s\n' '#include "kernels/ops.h"' '#include <cuda_runtime.h>' \
    '#include "runtime/base/check.h"' '#include <cuda/std/atomic>' >"${bad}/runtime/cuda/ok.cc"
  printf '%s\n' '#include "kernels/ops.h"' '#include <cuda_bf16.h>' '#include <cstdint>' \
    '#include <cub/cub.cuh>' >"${bad}/kernels/ok.cu"
  printf '%s\n' '#include <grpcpp/grpcpp.h>' '#include "proto/hyla/v1/hyla.pb.h"' \
    '#include <prometheus/counter.h>' '#include "runtime/engine/backend.h"' \
    '#include <google/protobuf/message.h>' >"${bad}/service/ok.cc"
  printf '%s\n' '#include <grpcpp/grpcpp.h>' '#include <gtest/gtest.h>' \
    >"${bad}/tests/service/ok_test.cc"
  printf '%s\n' '// #include <grpcpp/grpcpp.h> is fine in a comment' '#include "runtime/model/json.h"' \
    >"${bad}/tools/ok.cc"
  printf '%s\n' 'add_library(x a.cc b.cc)' '# never file(GLOB ...) here' >"${bad}/CMakeLists.txt"
  cp -r "${bad}/." "${good}"
  rm -rf "${good}/.git"
  git -C "${good}" init -q

  # Bad files: every numbered line below must be reported, and nothing else.
  printf '%s\n' '#include "runtime/base/check.h"' '#include <grpcpp/grpcpp.h>' \
    '#include "kernels/ops.h"' '#include <cuda_runtime.h>' '#include "ops.h"' \
    '#include <nlohmann/json.hpp>' '#include "service/metrics.h"' >"${bad}/runtime/base/bad.cc"
  printf '%s\n' '#include "kernels/rmsnorm.cuh"' '#include <grpc/grpc.h>' \
    >"${bad}/runtime/cuda/bad.h"
  printf '%s\n' '#include "kernels/ops.h"' '#include "absl/status/status.h"' \
    '#include "runtime/base/check.h"' '#include <google/protobuf/message.h>' \
    '#include <absl/types/span.h>' >"${bad}/kernels/bad.cu"
  printf '%s\n' '#include <vector>' '#include "runtime/base/float16.h"' >"${bad}/kernels/bad.cuh"
  printf '%s\n' '#include "proto/hyla/v1/hyla.grpc.pb.h"' '#include <prometheus/registry.h>' \
    '#include "runtime/engine/backend.h"' '#include <google/protobuf/util/json_util.h>' \
    >"${bad}/tools/bad.cc"
  printf '%s\n' '#include <grpcpp/grpcpp.h>' >"${bad}/tests/bad_test.cc"
  printf '%s\n' 'project(x)' 'file(GLOB srcs *.cc)  # no' 'add_library(x ${srcs})' \
    >"${bad}/runtime/CMakeLists.txt"
  printf '%s\n' 'set(a 1)' '  FILE (GLOB_RECURSE more "*.cu")' >"${bad}/cmake/helpers.cmake"
  # Untracked files are not checked.
  git -C "${bad}" add -A
  git -C "${good}" add -A
  printf '%s\n' '#include <grpcpp/grpcpp.h>' >"${bad}/runtime/untracked.cc"

  local expected actual rc=0 failed=0
  expected="$(printf '%s\n' cmake/helpers.cmake:2 kernels/bad.cu:2 kernels/bad.cu:3 \
    kernels/bad.cu:4 kernels/bad.cu:5 kernels/bad.cuh:2 runtime/CMakeLists.txt:2 \
    runtime/base/bad.cc:2 runtime/base/bad.cc:3 runtime/base/bad.cc:4 runtime/base/bad.cc:5 \
    runtime/base/bad.cc:6 runtime/base/bad.cc:7 runtime/cuda/bad.h:1 runtime/cuda/bad.h:2 \
    tests/bad_test.cc:1 tools/bad.cc:1 tools/bad.cc:2 tools/bad.cc:4 | sort)"
  actual="$(check_tree "${bad}")" || rc=$?
  local got
  got="$(printf '%s\n' "${actual}" | cut -d: -f1,2 | sort)"
  if [[ "${rc}" -ne 1 ]]; then
    echo "self-test: expected exit 1 on the bad tree, got ${rc}"
    failed=1
  fi
  if [[ "${got}" != "${expected}" ]]; then
    echo "self-test: reported violations differ from the expected ones:"
    diff <(printf '%s\n' "${expected}") <(printf '%s\n' "${got}") | sed 's/^/  /' || true
    printf '%s\n' "${actual}" | sed 's/^/  got: /'
    failed=1
  fi
  rc=0
  actual="$(check_tree "${good}")" || rc=$?
  if [[ "${rc}" -ne 0 || -n "${actual}" ]]; then
    echo "self-test: the good tree was rejected (exit ${rc}):"
    printf '%s\n' "${actual}" | sed 's/^/  /'
    failed=1
  fi
  if ((failed)); then
    echo "check_deps self-test: FAILED"
    return 1
  fi
  echo "check_deps self-test: ok ($(printf '%s\n' "${expected}" | wc -l) planted violations found, clean tree passes)"
}

case "${1:-}" in
  --self-test)
    self_test
    ;;
  --root)
    [[ $# -eq 2 ]] || { usage; exit 2; }
    if check_tree "$2"; then echo "check_deps: ok"; else echo "check_deps: FAILED"; exit 1; fi
    ;;
  "")
    if check_tree "${ROOT}"; then echo "check_deps: ok"; else echo "check_deps: FAILED"; exit 1; fi
    ;;
  -h | --help)
    usage
    ;;
  *)
    usage
    exit 2
    ;;
esac
