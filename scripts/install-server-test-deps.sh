#!/usr/bin/env bash
# Creates (once) the Python virtual environment the server tests drive
# fastinfer-server from: the official `openai` client from PyPI.
# Usage: scripts/install-server-test-deps.sh [VENV_DIR]   (default build/venv-server)
# Idempotent: does nothing when VENV_DIR already imports openai. Exit 1 (and
# a one-line reason on stderr) when the venv cannot be made, e.g. offline.
set -euo pipefail
venv="${1:-$(dirname "$0")/../build/venv-server}"
# The client API the tests use (streaming, extra_body, typed errors) is v1's.
spec='openai>=1.30,<3'
# Two tests may ask at once (ctest -j): one creates, the other waits.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  exit 0
fi
[ -f "$venv/pyvenv.cfg" ] && rm -rf "$venv"  # a half-made one from an interrupted run
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  echo "cannot create a virtual environment at $venv (python3-venv missing?)" >&2
  exit 1
fi
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" >"$venv/pip.log" 2>&1; then
  echo "pip could not install $spec into $venv (offline?): see $venv/pip.log" >&2
  exit 1
fi
