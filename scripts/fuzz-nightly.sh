#!/usr/bin/env bash
# The nightly-style fuzz run: every reader for SECONDS (default 1 hour) each,
# two at a time, growing the corpus kept in build/fuzz/corpus/ between runs.
# Usage: scripts/fuzz-nightly.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
FASTINFER_FUZZ_SEED="${FASTINFER_FUZZ_SEED:-0}" exec scripts/fuzz.sh "${1:-3600}"
