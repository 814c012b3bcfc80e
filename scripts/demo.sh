#!/usr/bin/env bash
# Installs the dependencies, builds fastinfer-serve-bench and fastinfer-generate,
# serves a synthetic workload on synthetic:15M (random weights, no file needed)
# with continuous batching and with static batching, then tells a story with
# the TinyStories-656K model (../shared/models/tinystories-656k, or the
# directory given as $1). Without that model it runs stories260K, or a
# synthetic model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target fastinfer-serve-bench fastinfer-generate
echo "== serving 32 requests on synthetic:15M: continuous vs static batching =="
build/release/examples/fastinfer-serve-bench --model synthetic:15M --requests 32 --prompt-len 32:96 --output-len 32:96
gen=build/release/examples/fastinfer-generate
shared="${FASTINFER_SHARED_DIR:-../shared}"
model="${1:-$shared/models/tinystories-656k}"
if [ -f "$model/config.json" ]; then
  echo "== a story from $model =="
  "$gen" --model "$model" --prompt "Once upon a time, there was a little dog" \
         --max-new-tokens 200 --temperature 0.8 --top-p 0.9 --seed 42 --stats-json
elif [ -f "$shared/models/stories260K.bin" ]; then
  echo "== stories260K (token ids: its tokenizer is not available) =="
  "$gen" --model "$shared/models/stories260K.bin" --prompt-ids 1 --max-new-tokens 64 --stats-json
else
  echo "== no model found: synthetic:15M (random weights) =="
  "$gen" --model synthetic:15M --max-new-tokens 32 --print-ids --stats-json
fi
