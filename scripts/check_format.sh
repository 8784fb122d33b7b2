#!/usr/bin/env bash
# Checks that every git-tracked C++/CUDA source (*.h, *.cc, *.cu, *.cuh) is formatted with
# clang-format-14 and the repository's .clang-format (Google style, 100 columns).
#
# Usage: scripts/check_format.sh            check all tracked sources; list the offending files
#        scripts/check_format.sh FILE...    check only these files
#        scripts/check_format.sh --fix FILE...  format these files in place (never the whole
#                                           tree by default: other people's files are theirs)
# Exits 1 if any file is not formatted.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

CLANG_FORMAT="${CLANG_FORMAT:-}"
if [[ -z "${CLANG_FORMAT}" ]]; then
  if command -v clang-format-14 >/dev/null; then
    CLANG_FORMAT=clang-format-14
  elif command -v clang-format >/dev/null && clang-format --version | grep -q 'version 14\.'; then
    CLANG_FORMAT=clang-format
  else
    echo "check_format: clang-format-14 not found (scripts/setup.sh installs it)" >&2
    exit 2
  fi
fi

fix=0
if [[ "${1:-}" == "--fix" ]]; then
  fix=1
  shift
  [[ $# -gt 0 ]] || { echo "check_format: --fix needs the files to format" >&2; exit 2; }
fi

cd "${ROOT}"
if [[ $# -gt 0 ]]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files -- '*.h' '*.cc' '*.cu' '*.cuh')
fi

if ((fix)); then
  "${CLANG_FORMAT}" -i --style=file -- "${files[@]}"
  echo "check_format: formatted ${#files[@]} file(s)"
  exit 0
fi

bad=()
for f in "${files[@]}"; do
  [[ -f "${f}" ]] || continue
  if ! "${CLANG_FORMAT}" --style=file --dry-run --Werror -- "${f}" >/dev/null 2>&1; then
    bad+=("${f}")
  fi
done

if ((${#bad[@]})); then
  echo "check_format: ${#bad[@]} of ${#files[@]} file(s) need clang-format-14:"
  printf '  %s\n' "${bad[@]}"
  echo "fix with: scripts/check_format.sh --fix FILE..."
  exit 1
fi
echo "check_format: ok (${#files[@]} files)"
