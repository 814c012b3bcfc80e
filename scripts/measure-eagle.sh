#!/usr/bin/env bash
# EAGLE's acceptance and wall clock on held-out text prompts (none of them is
# in the trainer's data: that is stories the model generates from BOS), side
# by side with plain decoding in the same run. Greedy, 200 new tokens each.
#   scripts/measure-eagle.sh [HEAD] [MODEL] [EXTRA FLAGS for the EAGLE runs: --eagle-budget 30 ...]
# HEAD defaults to data/heads/tinystories-656k.eagle, MODEL to
# ../shared/models/tinystories-656k. Needs build/release/examples/fastinfer-generate.
# MEASURE_FLAGS (environment) go to both runs, e.g. the 110M stand-in:
#   MEASURE_FLAGS="--weights bf16 --threads 2 --tokenizer ../shared/models/tinystories-656k/tokenizer.json" \
#   scripts/measure-eagle.sh pad:data/heads/tinystories-656k.eagle inflate:../shared/models/tinystories-656k:110M
# DRAFTER=mtp (environment) measures MTP modules instead: HEAD is then an
# MTP heads file (default data/heads/tinystories-656k.mtp), passed as
# --spec mtp --mtp-heads HEAD; the EXTRA FLAGS (--eagle-depth ...) shape its tree.
# (bench/bench_eagle.cpp measures the same prompts with JSON output.)
# Prints, per prompt, tokens per target pass and decode tok/s of plain and
# EAGLE, then the totals: tokens / passes over all prompts, and the ratio of
# summed decode times (plain / EAGLE: > 1 means EAGLE is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
drafter="${DRAFTER:-eagle}"
head="${1:-data/heads/tinystories-656k.$drafter}"
model="${2:-${FASTINFER_SHARED_DIR:-../shared}/models/tinystories-656k}"
shift $(( $# > 2 ? 2 : $# ))
gen=build/release/examples/fastinfer-generate
prompts=(
  "Tom and Lily went to the park"
  "The little dog was sad because"
  "One day, a girl named Sue found a box"
  "There was a big red ball in the garden"
  "Ben wanted to fly like a bird"
  "The sun was hot and the cat was sleepy"
  "Mom said, let us bake a cake"
  "A small boat sailed on the lake"
)
read -r -a common <<< "${MEASURE_FLAGS:-}"
for p in "${prompts[@]}"; do
  plain=$("$gen" --model "$model" "${common[@]}" --prompt "$p" --max-new-tokens 200 --print-ids --stats-json 2>&1 >/dev/null | tail -1)
  eagle=$("$gen" --model "$model" "${common[@]}" --prompt "$p" --max-new-tokens 200 --print-ids --stats-json \
          --spec "$drafter" --"$drafter"-heads "$head" "$@" 2>&1 >/dev/null | tail -1)
  printf '%s\t%s\t%s\n' "$p" "$plain" "$eagle"
done | python3 -c '
import json, sys
tok = passes = t_plain = t_eagle = 0
for line in sys.stdin:
    p, a, b = line.rstrip("\n").split("\t")
    a, b = json.loads(a), json.loads(b)
    steps, fw = b["mean_accepted_per_step"], b["target_forwards"]
    tok += steps * fw
    passes += fw
    tp, te = a["decode_tok_s"], b["decode_tok_s"]
    t_plain += (a["new_tokens"] - 1) / tp
    t_eagle += (b["new_tokens"] - 1) / te
    print(f"{p[:40]:40s}  tokens/pass {steps:.2f}  plain {tp:8.0f} tok/s  eagle {te:8.0f} tok/s")
print(f"all prompts: {tok:.0f} tokens in {passes} target passes = {tok / passes:.2f} tokens per pass; "
      f"decode time plain / eagle = {t_plain / t_eagle:.2f}")
'
