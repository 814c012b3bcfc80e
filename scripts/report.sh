#!/usr/bin/env bash
# The benchmark report: builds what it needs, runs a matrix of techniques x
# batch sizes x prompt lengths, profiles a forward pass against the roofline,
# measures serving latency and speculative speed-ups, and writes
# docs/report/README.md with PNG plots (matplotlib) from the JSON it gathered.
#
#   scripts/report.sh [quick|full] [--note TEXT] [--llama-bench FILE --gguf MODEL.gguf]
#                     [--out DIR] [--threads N]
#
# quick: synthetic:15M f32, batches 1/4/16, prompts 32/128: under 10 minutes
#        from a clean build on 2 cores.
# full:  synthetic:110M bf16, batches 1/2/4/8/16/32, prompts 32/128/512, four
#        KV formats and a self-draft: well over an hour on 2 cores (not timed).
# --note: a line for every caption (say "loaded" when other work shares the CPU).
# --llama-bench FILE: JSON from `llama-bench -o json` on the same machine and
#        the GGUF given with --gguf; the report runs fastinfer-generate on that
#        GGUF with the same prompt/generation lengths and puts them side by side.
#        (llama.cpp is never built here.)
# Raw JSON goes to build/report/<mode>/; nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="quick"
note=""
llama_bench=""
gguf=""
out="docs/report"
threads="$(nproc)"
[ "$threads" -gt 2 ] && threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    quick|full) mode="$1" ;;
    --note) note="$2"; shift ;;
    --llama-bench) llama_bench="$2"; shift ;;
    --gguf) gguf="$2"; shift ;;
    --out) out="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "report.sh: unknown argument '$1' (expected quick, full, --note, --llama-bench, --gguf, --out, --threads)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$llama_bench" ]; then
  [ -f "$llama_bench" ] || { echo "report.sh: --llama-bench file '$llama_bench' not found" >&2; exit 2; }
  [ -n "$gguf" ] || { echo "report.sh: --llama-bench needs --gguf MODEL.gguf (the model llama-bench ran)" >&2; exit 2; }
  [ -f "$gguf" ] || { echo "report.sh: --gguf file '$gguf' not found" >&2; exit 2; }
fi

started=$(date +%s)
log() { printf '[report %4ds] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

# ---- dependencies and build (idempotent) ------------------------------------
scripts/install-deps.sh
if ! dpkg -s python3-matplotlib >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-matplotlib
fi
# Debian's interpreter: python3-matplotlib is installed for it, not for a
# python3 that pyenv or a venv may put first on PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
cmake --preset release >/dev/null
log "building"
cmake --build --preset release -j "$(nproc)" --target fastinfer-generate fastinfer-serve-bench bench_fma bench_bandwidth
bin=build/release
gen="$bin/examples/fastinfer-generate"
serve="$bin/examples/fastinfer-serve-bench"
[ -x "$gen" ] || gen="$(find "$bin" -name fastinfer-generate -type f | head -1)"
[ -x "$serve" ] || serve="$(find "$bin" -name fastinfer-serve-bench -type f | head -1)"

raw="build/report/$mode"
rm -rf "$raw"
mkdir -p "$raw" "$out"

if [ "$mode" = quick ]; then
  model="synthetic:15M"; weights="f32"; batches="1 4 16"; prompts="32 128"; new_tokens=32
  kv_formats="int8"; spec_ks="2 4"; serve_requests=48; profile_prompt=128; profile_new=64; reps=3
else
  model="synthetic:110M"; weights="bf16"; batches="1 2 4 8 16 32"; prompts="32 128 512"; new_tokens=64
  kv_formats="bf16 int8 int4 fp8-e4m3"; spec_ks="2 4 8"; serve_requests=128; profile_prompt=512; profile_new=128
  reps=3
fi
export OMP_WAIT_POLICY=passive

# ---- ceilings ---------------------------------------------------------------
log "ceilings: FMA peak per ISA level, streamed read"
"$bin/bench/bench_fma" --benchmark_format=json --benchmark_min_time=0.1 --benchmark_repetitions=3 \
  --benchmark_filter='threads:1/' >"$raw/fma.json" 2>/dev/null
"$bin/bench/bench_bandwidth" --benchmark_format=json >"$raw/bandwidth.json" 2>/dev/null
read -r roof_gbs roof_gflops isa < <("$py" - "$raw" "$threads" <<'EOF'
import json, sys
raw, threads = sys.argv[1], int(sys.argv[2])
bw = json.load(open(f"{raw}/bandwidth.json"))["benchmarks"]
gbs = max(b["bytes_per_second"] for b in bw if int(b.get("threads", 0)) == threads) / 1e9
# The cores' peak: the best 1-thread run times the threads (a threaded run on a
# shared machine measures the neighbours as much as the FMA units).
fma = [b for b in json.load(open(f"{raw}/fma.json"))["benchmarks"]
       if "error_occurred" not in b and b.get("run_type") == "iteration"]
top = {}
for b in fma:
    top[b["label"]] = max(top.get(b["label"], 0.0), b["gflops"])
isa = "avx512" if "avx512" in top else "avx2" if "avx2" in top else "sse2"
print(f"{gbs:.3f} {top[isa] * threads:.3f} {isa}")
EOF
)
log "ceilings: $roof_gbs GB/s, $roof_gflops GFLOP/s ($isa, $threads threads)"

ids() {  # $1 token ids: BOS then a deterministic spread over the vocabulary
  "$py" -c "import sys; n=int(sys.argv[1]); print(','.join(['1']+[str((i*7919+13)%31000+100) for i in range(n-1)]))" "$1"
}

# ---- profile of a forward pass ------------------------------------------------
log "profile: $model $weights, prompt $profile_prompt, $profile_new new tokens"
"$gen" --model "$model" --weights "$weights" --threads "$threads" --prompt-ids "$(ids $profile_prompt)" \
  --max-new-tokens "$profile_new" --print-ids --profile-json "$raw/profile.json" \
  --roofline-gbs "$roof_gbs" --roofline-gflops "$roof_gflops" >/dev/null

# ---- techniques x batch sizes x prompt lengths --------------------------------
# One serve-bench run per cell: B requests arriving at once, --max-seqs B.
# Each run reports continuous batching and the static baseline side by side.
# Every run is repeated $reps times, the repetitions interleaved (a drifting
# load hits every cell alike); the page shows medians.
cell() {  # technique batch prompt extra-args...
  local tech="$1" b="$2" p="$3"; shift 3
  "$serve" --model "$model" --weights "$weights" --threads "$threads" --requests "$b" --rate 0 \
    --max-seqs "$b" --static-batch "$b" --prompt-len "$p" --output-len "$new_tokens" --json "$@" \
    >"$raw/matrix_${tech}_b${b}_p${p}_r${r}.json"
}
for r in $(seq 1 "$reps"); do
for p in $prompts; do
  for b in $batches; do
    log "matrix: prompt $p, batch $b, repetition $r"
    cell paged "$b" "$p"
    for q in $kv_formats; do cell "kv-$q" "$b" "$p" --kv "$q" --no-static; done
    cell prefix-cache "$b" "$p" --prefix-cache --shared-prefix-fraction 1 --shared-prefix-len $((p / 2)) --no-static
    cell prompt-lookup "$b" "$p" --spec prompt-lookup --spec-policy always --no-static
    if [ "$mode" = full ]; then cell draft-self "$b" "$p" --spec draft --spec-policy always --no-static; fi
  done
  # Batch 1 without the engine: the plain single-sequence loop (contiguous KV).
  "$gen" --model "$model" --weights "$weights" --threads "$threads" --prompt-ids "$(ids "$p")" \
    --max-new-tokens "$new_tokens" --print-ids --stats-json 2>"$raw/plain_p${p}_r${r}.json" >/dev/null
done
done

# ---- serving latency distributions --------------------------------------------
log "serving: $serve_requests requests, Poisson arrivals"
"$serve" --model "$model" --weights "$weights" --threads "$threads" --requests "$serve_requests" --rate 20 \
  --prompt-len 16:128 --output-len 16:64 --max-seqs 16 --static-batch 16 --json --samples >"$raw/serving.json"

# ---- speculative speed-up vs acceptance ---------------------------------------
# Greedy (a synthetic model's greedy text loops, so drafts are mostly right)
# and sampled at temperature 1 (near-uniform next tokens: drafts mostly wrong):
# the two ends of the acceptance axis, each against plain decoding with the
# same sampling.
log "speculative decoding"
spec_prompt="$(ids 64)"
spec_run() {  # name args...
  local name="$1"; shift
  "$gen" --model "$model" --weights "$weights" --threads "$threads" --prompt-ids "$spec_prompt" \
    --max-new-tokens $((new_tokens * 4)) --print-ids --stats-json "$@" 2>"$raw/spec_${name}_r${r}.json" >/dev/null
}
for r in $(seq 1 "$reps"); do
for sampling in greedy sampled; do
  temp=0; [ "$sampling" = sampled ] && temp=1
  spec_run "${sampling}_plain" --temperature "$temp" --seed 7
  for k in $spec_ks; do
    spec_run "${sampling}_prompt-lookup_k$k" --temperature "$temp" --seed 7 --spec prompt-lookup --spec-k "$k"
    spec_run "${sampling}_draft-q8_0_k$k" --temperature "$temp" --seed 7 --spec draft --draft-weights q8_0 --spec-k "$k"
  done
  spec_run "${sampling}_lookahead" --temperature "$temp" --seed 7 --spec lookahead
done
done

# ---- optional: llama.cpp side by side -----------------------------------------
if [ -n "$llama_bench" ]; then
  log "llama.cpp side by side on $gguf"
  cp "$llama_bench" "$raw/llama_bench.json"
  "$py" - "$llama_bench" <<'EOF' | while read -r np ng; do
import json, sys
seen = set()
for e in json.load(open(sys.argv[1])):
    key = (int(e["n_prompt"]), int(e["n_gen"]))
    if key not in seen:
        seen.add(key)
        print(*key)
EOF
    n_new=$(( ng > 0 ? ng : 1 ))
    n_prompt=$(( np > 0 ? np : 1 ))
    "$gen" --model "$gguf" --threads "$threads" --prompt-ids "$(ids "$n_prompt")" \
      --max-new-tokens "$n_new" --print-ids --stats-json 2>"$raw/ours_p${np}_g${ng}.json" >/dev/null
  done
fi

log "plots and page"
"$py" scripts/report/make_report.py --raw "$raw" --out "$out" --mode "$mode" --model "$model" \
  --weights "$weights" --threads "$threads" --new-tokens "$new_tokens" --note "$note" --seconds "$(( $(date +%s) - started ))"
log "done: $out/README.md"
