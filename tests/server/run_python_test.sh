#!/usr/bin/env bash
# CTest entry of the server tests: makes the openai venv (once), then runs
# one Python test file against the built programs.
# Usage: run_python_test.sh TEST.py VENV_DIR SERVER_BIN GENERATE_BIN SHARED_DIR
# The test skips (prints FASTINFER_SKIP, exits 0) when the venv cannot be
# made (no network for PyPI) or the shared models are missing.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
test_py="$1" venv="$2"
shift 2
if ! why=$("$here/../../scripts/install-server-test-deps.sh" "$venv" 2>&1); then
  echo "FASTINFER_SKIP: no openai client venv: $why"
  exit 0
fi
exec "$venv/bin/python" -u "$here/$test_py" "$@"
