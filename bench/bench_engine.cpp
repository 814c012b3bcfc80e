// The Engine's figures (issues 5 and 4):
//
// BM_ContinuousVsStatic: N requests of P prompt + O output tokens, all
//   arriving at once, through the Engine (continuous batching) and through
//   the static-batching baseline on the same model in the same run.
//   Counters: continuous_tok_s, static_tok_s (prompt + generated tokens /
//   wall time, as llama.cpp's batched-bench counts) and speedup.
//   Target (issue 5): synthetic:110M bf16, 64 x (128 + 128): speedup >= 3 and
//   continuous_tok_s >= 1.5 x 540 (llama.cpp's best, ../shared/ANCHORS.md).
// BM_SchedulerShare: S requests decoding together (S running sequences);
//   counter schedule_share = schedule() + commit() time / whole step time.
//   Target: <= 2 % at 256 running sequences.
// BM_PrefixTTFT: time to first token of a prompt of T tokens whose first C
//   are cached (a warm-up request left them) vs cold. Counters ttft_ms_cold,
//   ttft_ms_cached, speedup. Target (issue 4): synthetic:110M, T 1024, C 960:
//   speedup >= 8.
// BM_EngineSpeculation/B/M: B requests (1, 4, 16) of a repetitive 64-token
//   prompt (a 4-token pattern) and 64 output tokens, greedy, all at once,
//   through the Engine with speculation mode M: 0 none, 1 prompt lookup
//   (always), 2 prompt lookup (adaptive switch), 3 self-draft with the
//   target's own weights (always), 4 self-draft (adaptive switch),
//   k = FASTINFER_ENGINE_SPEC_K (4).
//   Counters: output_tok_s, speedup_vs_none (against runs without
//   speculation beside it, below), accepted_per_row, acceptance,
//   spec_row_share (speculating rows / candidate rows: what the switch let
//   through).
//   Each of FASTINFER_ENGINE_SPEC_RUNS (5) iterations runs the requests
//   twice, each through a fresh Engine: without speculation, then with mode
//   M (the time reported); speedup_vs_none is the median of the iterations'
//   ratios, output_tok_s the median of mode M's. Why pairs: a run of 16
//   requests lasts ~0.2 s on the 15M stand-in, and on a shared 2-vCPU machine
//   one-run ratios of none against none, measured configurations apart in
//   one process, spread 0.91-1.06x; mode 0's speedup_vs_none (none against
//   none, side by side) shows the spread that is left.
//
// These are heavy at full size; the defaults run in a minute or two on two
// cores. Sizes come from the environment:
//   FASTINFER_ENGINE_MODEL (synthetic:15M)   FASTINFER_ENGINE_WEIGHTS (bf16)
//   FASTINFER_ENGINE_REQUESTS (32)  FASTINFER_ENGINE_PROMPT (64)  FASTINFER_ENGINE_OUTPUT (64)
//   FASTINFER_ENGINE_STATIC_BATCH (16)  FASTINFER_ENGINE_THREADS (2)
//   FASTINFER_ENGINE_SEQS (256: BM_SchedulerShare)
//   FASTINFER_ENGINE_TTFT_MODEL (synthetic:15M)  FASTINFER_ENGINE_TTFT_PROMPT (model context, at most 1024)
//   FASTINFER_ENGINE_TTFT_CACHED (prompt - 64)
// Full size (one command, two lines here):
//   FASTINFER_ENGINE_MODEL=synthetic:110M FASTINFER_ENGINE_REQUESTS=64 FASTINFER_ENGINE_PROMPT=128
//   FASTINFER_ENGINE_OUTPUT=128 FASTINFER_ENGINE_TTFT_MODEL=synthetic:110M bench_engine
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/engine/engine.hpp"
#include "fastinfer/engine/static_batcher.hpp"
#include "fastinfer/engine/workload.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/sched/scheduler_metrics.hpp"

namespace {

namespace fe = fastinfer::engine;
using fastinfer::bench::env_int;
using fastinfer::bench::env_str;

fastinfer::LlamaWeights load(const std::string& spec) {
  fastinfer::LoadOptions o;
  o.weight_dtype = fastinfer::parse_weight_dtype(env_str("FASTINFER_ENGINE_WEIGHTS", "bf16"));
  o.threads = env_int("FASTINFER_ENGINE_THREADS", 2);
  return fastinfer::load_model(spec, o);
}

fastinfer::ModelOptions paged(int seqs, int tokens_per_seq, int max_batch, int ctx) {
  fastinfer::ModelOptions mo;
  mo.threads = env_int("FASTINFER_ENGINE_THREADS", 2);
  mo.max_batch = std::min(max_batch, ctx);
  mo.kv.layout = fastinfer::KVLayoutKind::Paged;
  mo.kv.max_sequences = seqs;
  mo.kv.num_blocks = std::max(seqs * ((tokens_per_seq + 15) / 16 + 1), (ctx + 15) / 16 + 2);
  return mo;
}

void BM_ContinuousVsStatic(benchmark::State& state) {
  const int n = env_int("FASTINFER_ENGINE_REQUESTS", 32), p = env_int("FASTINFER_ENGINE_PROMPT", 64),
            o = env_int("FASTINFER_ENGINE_OUTPUT", 64), sb_size = env_int("FASTINFER_ENGINE_STATIC_BATCH", 16);
  fastinfer::LlamaWeights w = load(env_str("FASTINFER_ENGINE_MODEL", "synthetic:15M"));
  const auto cfg = w.config;
  fastinfer::LlamaModel<> model(std::move(w), paged(std::max(n, sb_size), p + o, 512, cfg.max_seq_len));
  fe::WorkloadConfig wc;
  wc.num_requests = n;
  wc.prompt = {p, p};
  wc.output = {o, o};
  wc.vocab_size = cfg.vocab_size;
  const auto reqs = fe::make_workload(wc);
  double cont = 0, stat = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    fe::EngineConfig ec;
    ec.scheduler.max_seqs = n;
    ec.scheduler.max_tokens_per_step = 512;
    fe::Engine<> engine(model, ec);
    fe::drive(engine, reqs);
    cont = engine.metrics().throughput_tok_s;
    fe::StaticBatcher<> sb(model, {sb_size});
    sb.run(reqs);
    stat = sb.metrics().throughput_tok_s;
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  state.counters["continuous_tok_s"] = cont;
  state.counters["static_tok_s"] = stat;
  state.counters["speedup"] = stat > 0 ? cont / stat : 0;
  state.counters["vs_llamacpp_540"] = cont / 540.0;
}
BENCHMARK(BM_ContinuousVsStatic)->Iterations(1)->UseManualTime()->Unit(benchmark::kSecond);

void BM_SchedulerShare(benchmark::State& state) {
  const int seqs = env_int("FASTINFER_ENGINE_SEQS", 256);
  fastinfer::LlamaWeights w = load(env_str("FASTINFER_ENGINE_MODEL", "synthetic:15M"));
  const auto cfg = w.config;
  const int prompt = 8, output = 64;
  fastinfer::LlamaModel<> model(std::move(w), paged(seqs, prompt + output, 512, cfg.max_seq_len));
  fe::WorkloadConfig wc;
  wc.num_requests = seqs;
  wc.prompt = {prompt, prompt};
  wc.output = {output, output};
  wc.vocab_size = cfg.vocab_size;
  const auto reqs = fe::make_workload(wc);
  double share = 0, step_ms = 0;
  for (auto _ : state) {
    fe::EngineConfig ec;
    ec.scheduler.max_seqs = seqs;
    ec.scheduler.max_tokens_per_step = 512;
    fe::Engine<> engine(model, ec);
    for (const auto& r : reqs) engine.submit(r);
    // Admission steps first (prefills), then measure pure decode steps with
    // every sequence running.
    while (engine.batcher().num_waiting() > 0) engine.step();
    engine.step();
    const fe::EngineMetrics before = engine.metrics();
    state.counters["running"] = double(engine.batcher().num_running());
    int steps = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (; steps < 16 && engine.step(); ++steps) {
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const fe::EngineMetrics after = engine.metrics();
    const double sched = after.schedule_seconds - before.schedule_seconds;
    const double total = sched + (after.execute_seconds - before.execute_seconds) +
                         (after.sample_seconds - before.sample_seconds);
    share = total > 0 ? sched / total : 0;
    step_ms = steps > 0 ? wall / steps * 1e3 : 0;
    state.SetIterationTime(wall);
    engine.run();
  }
  state.counters["schedule_share"] = share;
  state.counters["step_ms"] = step_ms;
}
BENCHMARK(BM_SchedulerShare)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_PrefixTTFT(benchmark::State& state) {
  fastinfer::LlamaWeights w = load(env_str("FASTINFER_ENGINE_TTFT_MODEL", "synthetic:15M"));
  const auto cfg = w.config;
  const int t = env_int("FASTINFER_ENGINE_TTFT_PROMPT", std::min(cfg.max_seq_len - 1, 1024));
  const int c = env_int("FASTINFER_ENGINE_TTFT_CACHED", t - 64);
  fastinfer::LlamaModel<> model(std::move(w), paged(2, cfg.max_seq_len, 1024, cfg.max_seq_len));
  fe::WorkloadConfig wc;
  wc.num_requests = 1;
  wc.prompt = {t, t};
  wc.vocab_size = cfg.vocab_size;
  fastinfer::sched::Request full = fe::make_workload(wc)[0];
  full.max_new_tokens = 1;
  full.arrival_time = -1;
  fastinfer::sched::Request warm = full;
  warm.prompt.resize(std::size_t(c));
  // The tail differs from anything cached before.
  double cold = 0, cached = 0;
  for (auto _ : state) {
    for (bool use_cache : {false, true}) {
      fe::EngineConfig ec;
      ec.prefix_cache = use_cache;
      ec.scheduler.max_tokens_per_step = model.max_batch();
      fe::Engine<> engine(model, ec);
      engine.submit(warm);
      engine.run();
      const auto id = engine.submit(full);
      engine.run();
      (use_cache ? cached : cold) = engine.request_metrics(id).ttft;
      state.counters[use_cache ? "cached_tokens" : "cold_cached_tokens"] =
          double(engine.request_metrics(id).cached_prompt_tokens);
    }
    state.SetIterationTime(cold + cached);
  }
  state.counters["ttft_ms_cold"] = cold * 1e3;
  state.counters["ttft_ms_cached"] = cached * 1e3;
  state.counters["speedup"] = cached > 0 ? cold / cached : 0;
  state.counters["prompt"] = t;
}
BENCHMARK(BM_PrefixTTFT)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_EngineSpeculation(benchmark::State& state) {
  const int batch = int(state.range(0)), mode = int(state.range(1));
  fastinfer::LlamaWeights w = load(env_str("FASTINFER_ENGINE_MODEL", "synthetic:15M"));
  const auto cfg = w.config;
  const int prompt = 64, output = 64;
  fastinfer::LlamaModel<> model(w, paged(batch, prompt + output, 512, cfg.max_seq_len));
  std::vector<fastinfer::sched::Request> reqs;
  for (int i = 0; i < batch; ++i) {
    fastinfer::sched::Request r;
    r.prompt.push_back(cfg.bos_id);
    const std::int32_t pat[4] = {std::int32_t(100 + 7 * i), std::int32_t(200 + 3 * i), 300, std::int32_t(400 + i)};
    while (int(r.prompt.size()) < prompt) r.prompt.push_back(pat[r.prompt.size() % 4] % cfg.vocab_size);
    r.max_new_tokens = output;
    reqs.push_back(r);
  }
  fe::EngineConfig plain;
  plain.scheduler.max_seqs = batch;
  plain.scheduler.max_tokens_per_step = 512;
  fe::EngineConfig ec = plain;
  if (mode > 0) {
    const bool model_draft = mode == 3 || mode == 4;
    ec.spec.defaults.drafter = model_draft ? fe::SpecDrafter::DraftModel : fe::SpecDrafter::PromptLookup;
    ec.spec.defaults.k = env_int("FASTINFER_ENGINE_SPEC_K", 4);
    ec.spec.policy = mode == 2 || mode == 4 ? fe::SpecPolicy{fe::SpecAdaptive{}} : fe::SpecPolicy{fe::SpecAlways{}};
    if (model_draft) {
      ec.spec.draft_weights = w;
      ec.spec.draft_threads = env_int("FASTINFER_ENGINE_THREADS", 2);
    }
  }
  // One run: a fresh Engine (its draft model set up untimed), all requests at once.
  const auto run = [&](const fe::EngineConfig& config, fe::EngineMetrics& m) {
    fe::Engine<> engine(model, config);
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& r : reqs) engine.submit(r);
    engine.run();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m = engine.metrics();
    return seconds;
  };
  fe::EngineMetrics m, none;
  std::vector<double> tok_s, ratios;
  for (auto _ : state) {
    run(plain, none);
    state.SetIterationTime(run(ec, m));
    tok_s.push_back(m.output_tok_s);
    ratios.push_back(m.output_tok_s / none.output_tok_s);
  }
  state.counters["output_tok_s"] = fastinfer::sched::percentile(tok_s, 0.5);
  state.counters["speedup_vs_none"] = fastinfer::sched::percentile(ratios, 0.5);
  state.counters["accepted_per_row"] = m.mean_accepted_per_spec_row();
  state.counters["acceptance"] = m.acceptance_rate();
  state.counters["spec_row_share"] =
      m.spec_candidates > 0 ? double(m.spec_rows) / double(m.spec_candidates) : 0.0;
}
BENCHMARK(BM_EngineSpeculation)
    ->ArgsProduct({{1, 4, 16}, {0, 1, 2, 3, 4}})
    ->Iterations(env_int("FASTINFER_ENGINE_SPEC_RUNS", 5))
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

FASTINFER_BENCHMARK_MAIN()
