#!/usr/bin/env bash
# Runs one subcommand of deploy_checks.py with the deploy venv's Python (ctest's entry point).
#   run_check.sh PYTHON SUBCOMMAND [ARGS...]
# PYTHON is build/deploy-venv/bin/python3 (made by scripts/setup.sh) unless configured otherwise
# (-DHYLA_DEPLOY_PYTHON=...). A missing venv is a failure, never a skip.
set -euo pipefail
python="$1"
shift
if [[ ! -x "${python}" ]]; then
  echo "deploy checks: ${python} not found: run scripts/setup.sh (it creates build/deploy-venv" \
    "from tests/deploy/requirements.txt), or configure -DHYLA_DEPLOY_PYTHON=<python with them>" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
# The venv's own tools (kubectl, kubernetes-validate) come first on PATH.
PATH="$(dirname "${python}"):${PATH}" exec "${python}" \
  "$(dirname "${BASH_SOURCE[0]}")/deploy_checks.py" "$@"
