// fastinfer-serve-bench: a synthetic serving workload through the Engine
// (continuous batching) and through the static-batching baseline, on the
// same model. Prints a table, or with --json one object
// {"continuous": {...}, "static": {...}}.
//
// --spec prompt-lookup|draft|eagle|mtp|medusa|lookahead makes every request
// speculate inside the continuous batch (--spec-k drafts, or tree nodes for
// eagle, mtp, medusa and lookahead; --draft-model, default the target itself,
// loaded with --draft-weights; --eagle-head, --mtp-heads or --medusa-heads
// FILE|pad:FILE|random:SEED, with --eagle-depth and --eagle-top-k for the
// EAGLE and MTP trees; Medusa's tree is DynamicTree's, top_k 3; lookahead's
// window and pool --lookahead W,N,G, default 3,3,4), switched per step by --spec-policy
// (adaptive: the engine's cost model; always; never; max-batch:N). The
// static baseline never speculates.
//
// Exit codes (examples/common/cli.hpp): 0 ok; 2 bad usage (a flag out of its
// range, a workload too large for the limits below); 1 a bad model file or a
// runtime failure. Errors are one line on stderr.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/engine/engine.hpp"
#include "fastinfer/engine/static_batcher.hpp"
#include "fastinfer/engine/workload.hpp"
#include "fastinfer/core/checked_math.hpp"
#include "fastinfer/model/load_model.hpp"

#include "common/cli.hpp"
#include "common/engine_spec_flags.hpp"
#include "common/scheduler_flags.hpp"
#include "common/workload_flags.hpp"

namespace fx = fastinfer::examples;

namespace {

constexpr const char* kProgram = "fastinfer-serve-bench";
// Tokens a workload may hold in all (requests x (prompt + output)): its
// prompts alone are then at most 64 MiB of ids.
constexpr std::int64_t kMaxWorkloadTokens = std::int64_t(1) << 24;
// Arrivals are slept in real time: a rate that spreads them over more than
// this is refused rather than left to run for days.
constexpr double kMaxArrivalSpanSeconds = 3600;

nlohmann::json to_json(const fastinfer::sched::MetricsSummary& m, double wall, std::int64_t forward_tokens) {
  nlohmann::json j;
  j["requests"] = m.finished;
  j["prompt_tokens"] = m.prompt_tokens;
  j["generated_tokens"] = m.generated_tokens;
  j["wall_s"] = wall;
  j["throughput_tok_s"] = m.throughput_tok_s;
  j["output_tok_s"] = m.output_tok_s;
  j["ttft_ms_p50"] = m.ttft_p50 * 1e3;
  j["ttft_ms_p99"] = m.ttft_p99 * 1e3;
  j["itl_ms_p50"] = m.itl_p50 * 1e3;
  j["itl_ms_p99"] = m.itl_p99 * 1e3;
  j["e2e_ms_p50"] = m.e2e_p50 * 1e3;
  j["e2e_ms_p99"] = m.e2e_p99 * 1e3;
  j["preemptions"] = m.preemptions;
  j["kv_utilisation_mean"] = m.kv_utilisation_mean;
  j["kv_utilisation_peak"] = m.kv_utilisation_peak;
  j["prefix_hit_rate"] = m.prefix_hit_rate;
  j["steps"] = m.steps;
  j["forward_tokens"] = forward_tokens;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  namespace fe = fastinfer::engine;
  CLI::App app{"Serve a synthetic workload with continuous batching and with static batching"};
  std::string model_spec = "synthetic:15M", weights = "f32", prompt_len = "32:128", output_len = "32:128";
  int threads = 2, max_seqs = 64, budget = 512, chunk = 0, static_batch = 16, block_size = 16, kv_blocks = 0,
      swap_blocks = 0;
  std::string preemption = "recompute";
  std::string spec_policy = "adaptive", draft_model, draft_weights = "bf16";
  fx::EngineSpecFlags spec;
  bool json = false, prefix_cache = false, no_static = false, samples = false;
  std::string kv_quant = "f32";
  fe::WorkloadConfig w;
  w.num_requests = 64;
  app.add_option("--model", model_spec, "model: synthetic:NAME, a llama2.c .bin, a .gguf or an HF directory")
      ->capture_default_str();
  app.add_option("--weights", weights, "weight type")->check(CLI::IsMember(fx::weight_choices()))->capture_default_str();
  fastinfer::LoadOptions load;
  fx::add_ctx_size(app, load);
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--requests", w.num_requests, "number of requests")->check(CLI::Range(1, 1000000))->capture_default_str();
  app.add_option("--rate", w.rate, "Poisson arrival rate in requests/s (0: all at once)")
      ->check(CLI::Range(0.0, 1e9))->capture_default_str();
  app.add_option("--prompt-len", prompt_len, "prompt length N or MIN:MAX (uniform)")->capture_default_str();
  app.add_option("--output-len", output_len, "output length N or MIN:MAX (uniform)")->capture_default_str();
  app.add_option("--shared-prefix-fraction", w.shared_prefix_fraction, "fraction of prompts starting with one shared prefix")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  app.add_option("--shared-prefix-len", w.shared_prefix_tokens, "tokens of the shared prefix")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--temperature", w.temperature, "sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0f, 1e6f))->capture_default_str();
  app.add_option("--seed", w.seed, "workload and sampling seed")->check(fx::uint64_check())->capture_default_str();
  app.add_option("--max-seqs", max_seqs, "continuous: most running sequences")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--max-tokens-per-step", budget, "continuous: token budget of one step")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--prefill-chunk", chunk, "continuous: longest prefill chunk (0: the budget)")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  app.add_option("--preemption", preemption, "continuous: preemption policy")
      ->check(CLI::IsMember(fx::preemption_choices()))->capture_default_str();
  auto* swap_option = app.add_option("--swap-blocks", swap_blocks, "host swap space in KV blocks (--preemption swap)")
                          ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  app.add_flag("--prefix-cache", prefix_cache, "continuous: reuse the KV of shared prefixes");
  app.add_option("--block-size", block_size, "KV block size in tokens, a power of two")
      ->check(CLI::Range(1, fx::kMaxBlockSize))->capture_default_str();
  app.add_option("--kv-blocks", kv_blocks, "KV pool in blocks (0: room for every sequence of both runs)")
      ->check(CLI::Range(0, 1 << 24))->capture_default_str();
  app.add_option("--static-batch", static_batch, "static baseline: batch size")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_flag("--no-static", no_static, "skip the static baseline");
  spec.add_to(app, {"none", "prompt-lookup", "draft", "eagle", "mtp", "medusa", "lookahead"},
              "continuous: speculation per request");
  auto* draft_model_option = app.add_option("--draft-model", draft_model, "draft model spec (default: the target's)");
  auto* draft_weights_option = app.add_option("--draft-weights", draft_weights, "draft model weight type")
      ->check(CLI::IsMember(fx::weight_choices()))->capture_default_str();
  app.add_option("--spec-policy", spec_policy, "when rows speculate: adaptive, always, never, max-batch:N")
      ->capture_default_str();
  app.add_option("--kv", kv_quant, "KV cache storage")
      ->check(CLI::IsMember(fx::kv_quant_choices()))
      ->capture_default_str();
  app.add_flag("--json", json, "print one JSON object");
  app.add_flag("--samples", samples,
               "with --json: every request's TTFT and every inter-token gap of the continuous run (ms), "
               "for distributions");
  if (const int code = fx::parse_args(app, kProgram, argc, argv); code >= 0) return code;

  return fx::run_main(kProgram, [&]() -> int {
    FASTINFER_CHECK(fastinfer::kv::is_power_of_two(block_size), fastinfer::InvalidArgument, "--block-size ",
                    block_size, " is not a power of two");
    fx::refuse_unused(preemption != "swap", {swap_option}, "without --preemption swap");
    fx::refuse_unused(spec.kind != "draft", {draft_model_option, draft_weights_option},
                      "without --spec draft");
    const fastinfer::speculative::LookaheadConfig lookahead_cfg = spec.check();
    w.prompt = fx::parse_length_range(prompt_len);
    w.output = fx::parse_length_range(output_len);
    // 64-bit: each length may be up to 2^24, their sum times the requests more.
    const std::int64_t seq_max = std::int64_t(w.prompt.max) + w.output.max;
    const std::int64_t workload_tokens = fastinfer::checked_mul(w.num_requests, seq_max, "workload tokens");
    FASTINFER_CHECK(workload_tokens <= kMaxWorkloadTokens, fastinfer::InvalidArgument, "--requests ",
                    w.num_requests, " x (prompt + output) ", seq_max, " = ", workload_tokens,
                    " tokens exceeds the limit of ", kMaxWorkloadTokens);
    FASTINFER_CHECK(w.rate == 0 || w.num_requests / w.rate <= kMaxArrivalSpanSeconds, fastinfer::InvalidArgument,
                    "--rate ", w.rate, " spreads ", w.num_requests, " arrivals over ", w.num_requests / w.rate,
                    " s (at most ", kMaxArrivalSpanSeconds, " s)");
    load.weight_dtype = fastinfer::parse_weight_dtype(weights);
    load.threads = threads;
    fastinfer::LlamaWeights lw = fastinfer::load_model(model_spec, load);
    const auto& cfg = lw.config;
    w.vocab_size = cfg.vocab_size;
    w.bos_id = cfg.bos_id;
    FASTINFER_CHECK(seq_max <= cfg.max_seq_len, fastinfer::InvalidArgument, "prompt + output lengths (", seq_max,
                    ") exceed the model's context of ", cfg.max_seq_len);
    const std::vector<fastinfer::sched::Request> requests = fe::make_workload(w);

    fastinfer::ModelOptions mo;
    mo.threads = threads;
    mo.max_batch = std::min(budget, cfg.max_seq_len);
    mo.kv.layout = fastinfer::KVLayoutKind::Paged;
    mo.kv.quant = fastinfer::kv::parse_quant(kv_quant);
    mo.kv.block_size = block_size;
    mo.kv.max_sequences = std::max(max_seqs, static_batch);
    const std::int64_t per_seq = (seq_max + block_size - 1) / block_size + 1;
    // The pool is sized from the workload, never from a file's huge context:
    // room for one sequence of the workload's longest, drafts (and
    // lookahead's window) included.
    const std::int64_t window = spec.kind == "lookahead" ? lookahead_cfg.window_rows() : 0;
    const std::int64_t longest = std::min<std::int64_t>(cfg.max_seq_len, seq_max + spec.k + window + 1);
    const std::int64_t ctx_blocks = (longest + block_size - 1) / block_size + 1;
    mo.kv.num_blocks = kv_blocks > 0 ? kv_blocks
                                     : fastinfer::checked_int32(std::max(std::int64_t(std::max(max_seqs, static_batch)) * per_seq,
                                                                         ctx_blocks + 1),
                                                                "KV pool blocks");
    fastinfer::LlamaModel<> model(std::move(lw), mo);

    fe::EngineConfig ec;
    ec.scheduler.max_seqs = max_seqs;
    ec.scheduler.max_tokens_per_step = budget;
    ec.scheduler.max_prefill_chunk = chunk;
    ec.scheduler.swap_blocks = swap_blocks;
    ec.scheduler.preemption = fx::parse_preemption(preemption);
    ec.prefix_cache = prefix_cache;
    spec.apply(ec, model.config());
    if (spec.kind == "draft") {
      fastinfer::LoadOptions dl;
      dl.weight_dtype = fastinfer::parse_weight_dtype(draft_weights);
      dl.threads = threads;
      dl.max_context = load.max_context;  // --ctx-size sizes the draft's KV pool too
      ec.spec.draft_weights = fastinfer::load_model(draft_model.empty() ? model_spec : draft_model, dl);
      ec.spec.draft_threads = threads;
    }
    if (spec_policy == "adaptive") ec.spec.policy = fe::SpecAdaptive{};
    else if (spec_policy == "always") ec.spec.policy = fe::SpecAlways{};
    else if (spec_policy == "never") ec.spec.policy = fe::SpecNever{};
    else if (spec_policy.rfind("max-batch:", 0) == 0 && spec_policy.size() > 10 &&
             spec_policy.find_first_not_of("0123456789", 10) == std::string::npos && spec_policy.size() < 19)
      ec.spec.policy = fe::SpecMaxBatch{std::int32_t(std::stoll(spec_policy.substr(10)))};
    else
      fastinfer::throw_error<fastinfer::InvalidArgument>("--spec-policy '", spec_policy,
                                                         "' (expected adaptive, always, never or max-batch:N)");

    nlohmann::json out;
    double wall_c = 0;
    fe::EngineMetrics mc;
    {
      fe::Engine<> engine(model, ec);
      if (engine.draft_never_pays() && std::holds_alternative<fe::SpecAdaptive>(ec.spec.policy))
        std::fprintf(
            stderr,
            "note: the draft model costs the target's pass or more (same weight types, as many bytes and "
            "multiply-adds): the adaptive switch never drafts with it (--spec-policy always does)\n");
      const double t0 = engine.now();
      const std::vector<fastinfer::sched::RequestId> ids = fe::drive(engine, requests);
      wall_c = engine.now() - t0;
      mc = engine.metrics();
      out["continuous"] = to_json(mc, wall_c, mc.forward_tokens);
      out["continuous"]["schedule_share"] =
          wall_c > 0 ? mc.schedule_seconds / (mc.schedule_seconds + mc.execute_seconds + mc.sample_seconds) : 0.0;
      nlohmann::json sj;
      sj["drafter"] = spec.kind;
      sj["k"] = spec.k;
      sj["policy"] = fe::spec_policy_name(ec.spec.policy);
      sj["candidates"] = mc.spec_candidates;
      sj["switched_off"] = mc.spec_switched_off;
      sj["draft_never_pays"] = engine.draft_never_pays();
      sj["rows"] = mc.spec_rows;
      sj["drafted"] = mc.spec_drafted;
      sj["accepted"] = mc.spec_accepted;
      sj["acceptance"] = mc.acceptance_rate();
      sj["mean_accepted_per_spec_row"] = mc.mean_accepted_per_spec_row();
      sj["refed"] = mc.spec_refed;
      sj["window_rows"] = mc.spec_window_rows;
      sj["spec_steps"] = mc.spec_steps;
      sj["draft_s"] = mc.draft_seconds;
      sj["draft_passes"] = mc.draft_passes;
      sj["draft_rows"] = mc.draft_rows;
      sj["cost_model"] = {{"valid", mc.cost_model.valid},
                          {"base_ms", mc.cost_model.base * 1e3},
                          {"per_token_ms", mc.cost_model.per_token * 1e3},
                          {"per_model_draft_ms", mc.cost_model.per_model_draft * 1e3},
                          {"per_draft_pass_ms", mc.cost_model.per_draft_pass * 1e3}};
      out["continuous"]["spec"] = sj;
      if (samples) {
        std::vector<double> ttft, itl;
        for (const auto id : ids) {
          const fastinfer::sched::RequestTiming& t = engine.timing(id);
          if (t.first_token >= 0) ttft.push_back((t.first_token - t.arrival) * 1e3);
          for (std::size_t i = 1; i < t.token_times.size(); ++i)
            itl.push_back((t.token_times[i] - t.token_times[i - 1]) * 1e3);
        }
        out["continuous"]["ttft_ms"] = ttft;
        out["continuous"]["itl_ms"] = itl;
      }
    }
    fastinfer::sched::MetricsSummary ms;
    if (!no_static) {
      fe::StaticBatcher<> sb(model, {static_batch});
      const auto t0 = std::chrono::steady_clock::now();
      sb.run(requests);
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ms = sb.metrics();
      out["static"] = to_json(ms, wall, sb.forward_tokens());
      out["speedup"] = ms.throughput_tok_s > 0 ? mc.throughput_tok_s / ms.throughput_tok_s : 0.0;
    }
    out["config"] = {{"model", model_spec},
                     {"weights", weights},
                     {"threads", threads},
                     {"requests", w.num_requests},
                     {"rate", w.rate},
                     {"prompt_len", prompt_len},
                     {"output_len", output_len},
                     {"shared_prefix_fraction", w.shared_prefix_fraction},
                     {"max_seqs", max_seqs},
                     {"max_tokens_per_step", budget},
                     {"static_batch", static_batch},
                     {"kv_blocks", mo.kv.num_blocks},
                     {"kv", kv_quant},
                     {"preemption", preemption},
                     {"prefix_cache", prefix_cache},
                     {"spec", spec.kind},
                     {"spec_k", spec.k},
                     {"spec_policy", spec_policy}};
    if (json) {
      std::cout << out.dump(2) << "\n";
      return 0;
    }
    fx::print_kv_size(kProgram, model);
    std::printf("%s (%s), %d requests, prompt %s, output %s, %s arrivals, %d thread(s)\n", model_spec.c_str(),
                weights.c_str(), w.num_requests, prompt_len.c_str(), output_len.c_str(),
                w.rate > 0 ? (std::to_string(w.rate) + "/s Poisson").c_str() : "all-at-once", threads);
    std::printf("%-24s %14s %14s\n", "", "continuous", no_static ? "" : "static");
    auto row = [&](const char* name, const char* key, const char* fmt) {
      std::printf("%-24s ", name);
      std::printf(fmt, out["continuous"][key].get<double>());
      if (!no_static) std::printf(fmt, out["static"][key].get<double>());
      std::printf("\n");
    };
    row("throughput (tok/s)", "throughput_tok_s", "%14.1f ");
    row("output (tok/s)", "output_tok_s", "%14.1f ");
    row("TTFT p50 (ms)", "ttft_ms_p50", "%14.1f ");
    row("TTFT p99 (ms)", "ttft_ms_p99", "%14.1f ");
    row("ITL p50 (ms)", "itl_ms_p50", "%14.2f ");
    row("ITL p99 (ms)", "itl_ms_p99", "%14.2f ");
    row("e2e p50 (ms)", "e2e_ms_p50", "%14.1f ");
    row("e2e p99 (ms)", "e2e_ms_p99", "%14.1f ");
    row("preemptions", "preemptions", "%14.0f ");
    row("KV utilisation (mean)", "kv_utilisation_mean", "%14.3f ");
    row("prefix hit rate", "prefix_hit_rate", "%14.3f ");
    row("wall (s)", "wall_s", "%14.2f ");
    if (!no_static) std::printf("continuous / static throughput: %.2fx\n", out["speedup"].get<double>());
    if (spec.kind != "none")
      std::printf(
          "speculation (%s, k %d, policy %s): %lld of %lld decode rows speculated, %lld drafted, %lld "
          "accepted "
          "(%.1f %%), %.2f accepted per speculating row\n",
          spec.kind.c_str(), spec.k, fe::spec_policy_name(ec.spec.policy), (long long)mc.spec_rows,
          (long long)mc.spec_candidates, (long long)mc.spec_drafted, (long long)mc.spec_accepted,
          100.0 * mc.acceptance_rate(), mc.mean_accepted_per_spec_row());
    return 0;
  });
}
