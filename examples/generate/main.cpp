// fastinfer-generate: greedy or sampled generation from a llama2.c checkpoint
// or a synthetic model, in token ids. Exit codes (examples/common/cli.hpp):
// 0 ok; 2 bad usage (unknown flag, malformed value, token id outside the
// vocabulary, prompt too long, a flag the chosen mode ignores); 1 any other
// failure (a bad model file, a size over a limit, non-finite logits). Errors
// are one line on stderr.
#include <charconv>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/engine/prompt_series.hpp"
#include "fastinfer/model/confident_exit.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/profiler.hpp"
#include "fastinfer/speculative/eagle_generate.hpp"
#include "fastinfer/speculative/mtp_generate.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"
#include "fastinfer/speculative/speculative_generate.hpp"
#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"
#include "fastinfer/tokenizer/sentencepiece_tokenizer.hpp"
#include "fastinfer/tokenizer/utf8.hpp"
#include "fastinfer/version.hpp"

#include "common/cli.hpp"
#include "common/drafter_flags.hpp"
#include "common/eagle_flags.hpp"
#include "common/medusa_flags.hpp"

namespace fe = fastinfer::examples;

// The roofline's ceilings, measured where the profile is taken.
#include "../../bench/fma_peak.hpp"
#include "../../bench/read_bandwidth.hpp"

namespace {

constexpr const char* kProgram = "fastinfer-generate";

// Positions a run may use past prompt + new tokens: drafts and tree nodes a
// speculative step feeds before it is verified.
constexpr std::int64_t kDraftRoom = 256;

// The CPU's name as the kernel reports it ("model name" in /proc/cpuinfo).
std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      const std::string name = line.substr(line.find(':') + 1);
      return name.substr(name.find_first_not_of(' '));
    }
  return "unknown CPU";
}

// Streamed-read GB/s (best of 3 passes over 512 MiB, beyond any L3 here) and
// the FMA peak at the ISA level the kernels were compiled for, with the
// model's threads; a ceiling given on the command line is not measured.
fastinfer::Roofline measure_roofline(int threads, double gbs, double gflops) {
  fastinfer::Roofline r;
  r.threads = threads;
  r.isa = fastinfer::bench::compiled_fma_level();
  r.cpu = cpu_name();
  if (gbs <= 0) {
    fastinfer::bench::ReadBuffer buffer(std::size_t(512) << 20, threads);
    float sink = 0;
    for (int i = 0; i < 3; ++i)
      gbs = std::max(gbs, 1e-9 * fastinfer::bench::timed_read_pass(buffer.data, buffer.count, threads, &sink));
  }
  r.read_gbs = gbs;
  r.peak_gflops = gflops > 0 ? gflops : fastinfer::bench::fma_peak_gflops(r.isa, threads);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Generate tokens with a Llama-family model (token ids in, token ids out)."};
  std::string model_spec = "synthetic:tiny", prompt_ids = "1", weights, prompt_text, tokenizer_path;
  fastinfer::GenerationParams params;
  int threads = 1;
  bool print_ids = false, stats_json = false;
  app.add_option("--model", model_spec,
                 "llama2.c .bin checkpoint, .gguf, Hugging Face directory or synthetic:tiny|15M|110M|1B")
      ->capture_default_str();
  std::vector<std::string> prompt_id_list{prompt_ids};
  std::string prompts_file;
  auto* ids_option = app.add_option("--prompt-ids", prompt_id_list,
                                    "comma-separated prompt token ids (1 is BOS); repeat for several prompts "
                                    "sharing one prefix cache")
                         ->capture_default_str();
  app.add_option("--prompts-file", prompts_file, "one prompt of token ids per line, run with one prefix cache")
      ->excludes(ids_option);
  app.add_option("--prompt", prompt_text, "prompt text (BOS is added); needs a vocabulary")->excludes(ids_option);
  app.add_option("--tokenizer", tokenizer_path,
                 "llama2.c tokenizer.bin, .gguf vocabulary or tokenizer.json (default: the model's own); prints text");
  app.add_option("--max-new-tokens", params.max_new_tokens, "most tokens to generate")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()))
      ->capture_default_str();
  app.add_option("--temperature", params.temperature, "0 = greedy")->check(CLI::Range(0.0f, 1e6f))->capture_default_str();
  app.add_option("--top-k", params.top_k, "keep the k most likely tokens (0 = off)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()))
      ->capture_default_str();
  app.add_option("--top-p", params.top_p, "nucleus mass (1 = off)")->check(CLI::Range(0.0f, 1.0f))->capture_default_str();
  app.add_option("--seed", params.seed, "sampling seed")->check(fe::uint64_check())->capture_default_str();
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--weights", weights, "convert matrices at load")->check(CLI::IsMember(fe::weight_choices()));
  fastinfer::LoadOptions load;
  fe::add_ctx_size(app, load);
  bool parse_special = false;
  app.add_flag("--parse-special", parse_special,
               "--prompt: the text of a special token (\"</s>\") becomes that token (default: plain text)");
  std::string kv_quant = "f32", kv_layout = "contiguous";
  fastinfer::KVOptions kv;
  app.add_option("--kv", kv_quant, "KV cache storage")
      ->check(CLI::IsMember(fe::kv_quant_choices()))
      ->capture_default_str();
  app.add_option("--kv-layout", kv_layout, "KV cache layout")
      ->check(CLI::IsMember(fe::kv_layout_choices()))
      ->capture_default_str();
  // Options a layout does not use are refused with it, never ignored.
  auto* block_size_option = app.add_option("--block-size", kv.block_size, "KV block size (paged, window), a power of two")
                                ->check(CLI::Range(1, fe::kMaxBlockSize))
                                ->capture_default_str();
  auto* window_option = app.add_option("--window", kv.window, "sliding window in tokens (--kv-layout window)")
                            ->check(CLI::Range(0, fastinfer::kMaxContext));
  auto* sinks_option = app.add_option("--sinks", kv.sinks, "attention sinks kept before the window")
                           ->check(CLI::Range(0, fastinfer::kMaxContext));
  app.add_flag("--print-ids", print_ids, "print only the generated ids, space separated, on one line");
  app.add_flag("--stats-json", stats_json, "print one JSON object of statistics on stderr");
  bool version = false;
  app.add_flag("--version", version, "print the version and the CPU kernel levels in use, then exit");
  bool profile = false;
  std::string profile_json;
  double roof_gbs = 0, roof_gflops = 0;
  app.add_flag("--profile", profile, "time every op of every forward pass; print a roofline table on stderr");
  app.add_option("--profile-json", profile_json, "write the op profile as JSON to this file (implies --profile)");
  app.add_option("--roofline-gbs", roof_gbs, "profile: streamed-read ceiling in GB/s (0: measure it)")
      ->check(CLI::Range(0.0, 1e6));
  app.add_option("--roofline-gflops", roof_gflops, "profile: FMA peak in GFLOP/s (0: measure it)")
      ->check(CLI::Range(0.0, 1e9));
  fe::DrafterSpec spec;
  int spec_k = 4;
  app.add_option("--spec", spec.kind, "speculative decoding drafter")
      ->check(CLI::IsMember(fe::drafter_kinds()))
      ->capture_default_str();
  app.add_option("--draft-model", spec.draft_model, "draft model for --spec draft (default: the target itself)");
  app.add_option("--draft-weights", spec.draft_weights, "draft model weights")
      ->check(CLI::IsMember(fe::weight_choices()))
      ->capture_default_str();
  app.add_option("--draft-kv", spec.draft_kv, "draft model KV cache storage (the target's is --kv)")
      ->check(CLI::IsMember(fe::kv_quant_choices()))
      ->capture_default_str();
  app.add_option("--lookup-candidates", spec.lookup_candidates,
                 "prompt lookup: matches verified per step (> 1: as a token tree)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--exit-layer", spec.exit_layer,
                 "--spec early-exit: draft with the first N layers (0: half the layers)")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  fastinfer::ConfidentExitOptions calm;
  app.add_option("--early-exit-threshold", calm.threshold,
                 "lossy early exit (CALM): a decoded token leaves after the layer where its top-1 probability "
                 "reaches P (0 = off)")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  app.add_option("--early-exit-patience", calm.patience,
                 "lossy early exit: leave once the top-1 token is the same after K consecutive layers (0 = off)")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  app.add_option("--early-exit-min-layer", calm.min_layer, "lossy early exit: the first layer a token may leave at")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  std::string spec_k_arg = "4";
  app.add_option("--spec-k", spec_k_arg,
                 "most drafted tokens per step: N (0-64), or auto[:N] for dynamic speculation (each step drafts the "
                 "0..N tokens that measured acceptance and pass cost say pay best; N defaults to 8)")
      ->capture_default_str();
  auto* lookahead_option = app.add_option("--lookahead", spec.lookahead, "lookahead W,N,G")->capture_default_str();
  std::string spec_rule = "exact";
  app.add_option("--spec-rule", spec_rule,
                 "sampled verification: exact (rejection sampling) or coupled (plain sampling's tokens, bit for bit)")
      ->check(CLI::IsMember(fe::acceptance_rule_choices()))
      ->capture_default_str();
  std::string medusa_heads = "random:1", medusa_tree = "dynamic";
  auto* heads_option = app.add_option("--medusa-heads", medusa_heads,
                 "Medusa heads file (tools/train_medusa.py), pad:FILE (zero-padded to an inflated model) or random:SEED")
      ->capture_default_str();
  auto* tree_option = app.add_option("--medusa-tree", medusa_tree,
                 "Medusa candidate tree: choices, choices:FILE (the trainer's HEADS.choices), dynamic, "
                 "dynamic:BUDGET[:TOP_K]")
      ->capture_default_str();
  std::string eagle_heads = "random:1";
  fastinfer::speculative::EagleOptions eagle_opts;
  auto* eagle_heads_option = app.add_option("--eagle-heads", eagle_heads,
                 "EAGLE head file (tools/train_eagle.py), pad:FILE (zero-padded to an inflated model) or random:SEED")
      ->capture_default_str();
  std::string mtp_heads = "random:1";
  auto* mtp_heads_option = app.add_option("--mtp-heads", mtp_heads,
                 "MTP modules file (tools/train_mtp.py), pad:FILE (zero-padded to an inflated model) or random:SEED "
                 "(4 random modules); --eagle-depth/-top-k/-budget shape its draft tree, at most one level per module")
      ->capture_default_str();
  auto* eagle_depth_option = app.add_option("--eagle-depth", eagle_opts.tree.depth, "EAGLE draft tree: most levels")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  auto* eagle_top_k_option = app.add_option("--eagle-top-k", eagle_opts.tree.top_k,
                 "EAGLE draft tree: children per expanded node and nodes expanded per level")
      ->check(CLI::Range(1, 62))
      ->capture_default_str();
  auto* eagle_budget_option = app.add_option("--eagle-budget", eagle_opts.tree.budget,
                 "EAGLE draft tree: nodes verified per step (pending + nodes <= 32 keeps greedy bit-exact)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  if (const int code = fe::parse_args(app, kProgram, argc, argv); code >= 0) return code;

  return fe::run_main(kProgram, [&]() -> int {
    if (version) {
      std::printf("%s %s; %s\n", kProgram, fastinfer::kVersionString, fastinfer::cpu::kernel_isa_summary().c_str());
      return 0;
    }
    const bool spec_auto = spec_k_arg.rfind("auto", 0) == 0;
    {
      const std::string n = spec_auto ? (spec_k_arg.size() > 4 && spec_k_arg[4] == ':' ? spec_k_arg.substr(5) : "8")
                                      : spec_k_arg;
      const auto parsed = std::from_chars(n.data(), n.data() + n.size(), spec_k);
      FASTINFER_CHECK(parsed.ec == std::errc() && parsed.ptr == n.data() + n.size() && spec_k >= 0 && spec_k <= 64 &&
                          (spec_k_arg.size() == 4 || !spec_auto || spec_k_arg[4] == ':'),
                      fastinfer::InvalidArgument, "--spec-k: expected N in [0, 64], auto or auto:N, got '",
                      spec_k_arg, "'");
    }
    fe::refuse_unused(kv_layout == "contiguous", {block_size_option, window_option, sinks_option},
                      "with --kv-layout contiguous");
    fe::refuse_unused(kv_layout == "paged", {window_option, sinks_option}, "with --kv-layout paged");
    fe::refuse_unused(spec.kind != "lookahead", {lookahead_option}, "without --spec lookahead");
    fe::refuse_unused(spec.kind != "medusa", {heads_option, tree_option}, "without --spec medusa");
    fe::refuse_unused(spec.kind != "eagle", {eagle_heads_option}, "without --spec eagle");
    fe::refuse_unused(spec.kind != "mtp", {mtp_heads_option}, "without --spec mtp");
    fe::refuse_unused(spec.kind != "eagle" && spec.kind != "mtp",
                      {eagle_depth_option, eagle_top_k_option, eagle_budget_option}, "without --spec eagle or mtp");
    if (!weights.empty()) load.weight_dtype = fastinfer::parse_weight_dtype(weights);
    load.threads = threads;
    if (prompt_id_list.size() > 1 || !prompts_file.empty()) {
      // Several prompts: one Engine with a prefix cache across them, greedy
      // or sampled, no speculation and no text.
      fe::refuse_unused(true, {app.get_option("--spec"), app.get_option("--tokenizer"), app.get_option("--kv"),
                               app.get_option("--kv-layout"), block_size_option, window_option, sinks_option,
                               heads_option, tree_option, lookahead_option, app.get_option("--spec-k"),
                               app.get_option("--spec-rule"), app.get_option("--draft-model"),
                               app.get_option("--print-ids"), app.get_option("--stats-json")},
                        "with several prompts (--prompt-ids repeated or --prompts-file)");
      std::vector<std::vector<std::int32_t>> prompts;
      if (!prompts_file.empty()) prompts = fastinfer::engine::read_prompts_file(prompts_file);
      for (const auto& p : prompts_file.empty() ? prompt_id_list : std::vector<std::string>{})
        prompts.push_back(fastinfer::parse_token_ids(p));
      fastinfer::LlamaWeights lw = fastinfer::load_model(model_spec, load);
      std::int64_t longest = 0;
      for (const auto& p : prompts) longest = std::max<std::int64_t>(longest, std::int64_t(p.size()));
      if (load.max_context == 0) fe::fit_context(lw.config, longest + params.max_new_tokens + kDraftRoom);
      fastinfer::KVOptions paged;
      paged.layout = fastinfer::KVLayoutKind::Paged;
      fastinfer::LlamaModel<> model(std::move(lw), {threads, 0, paged});
      const auto results = fastinfer::engine::run_prompt_series(model, prompts, params);
      for (std::size_t i = 0; i < results.size(); ++i) {
        std::printf("prompt %zu: %lld tokens, %lld cached, %lld computed\ngenerated:", i,
                    (long long)results[i].prompt_tokens, (long long)results[i].cached_tokens,
                    (long long)results[i].computed_tokens);
        for (auto id : results[i].tokens) std::printf(" %d", int(id));
        std::printf("\n");
      }
      return 0;
    }
    prompt_ids = prompt_id_list.front();
    // Text in and out when a vocabulary is at hand: --tokenizer, else a .gguf
    // model's own or a Hugging Face directory's tokenizer.json.
    const bool gguf_model = fe::ends_with(model_spec, ".gguf");
    const bool hf_model = std::filesystem::exists(std::filesystem::path(model_spec) / "tokenizer.json");
    std::shared_ptr<const fastinfer::Tokenizer> tok;
    const std::string vocab = !tokenizer_path.empty() ? tokenizer_path
                              : gguf_model            ? model_spec
                              : hf_model              ? (std::filesystem::path(model_spec) / "tokenizer.json").string()
                                                      : "";
    if (fe::ends_with(vocab, ".json"))
      tok = std::make_shared<fastinfer::HfBpeTokenizer>(fastinfer::HfBpeTokenizer::from_file(vocab));
    else if (!vocab.empty() && (vocab != model_spec || fastinfer::gguf::GgufFile::open(vocab)->has("tokenizer.ggml.tokens")))
      tok = fe::ends_with(vocab, ".gguf")
                ? fastinfer::SentencePieceTokenizer::from_gguf(*fastinfer::gguf::GgufFile::open(vocab))
                : fastinfer::SentencePieceTokenizer::from_llama2c(vocab);
    FASTINFER_CHECK(prompt_text.empty() || tok, fastinfer::InvalidArgument,
                    "--prompt needs a vocabulary: pass --tokenizer PATH (the model has none of its own)");
    FASTINFER_CHECK(!parse_special || !prompt_text.empty(), fastinfer::InvalidArgument,
                    "--parse-special applies to --prompt text only");
    const std::vector<std::int32_t> prompt =
        prompt_text.empty() ? fastinfer::parse_token_ids(prompt_ids)
                            : fastinfer::encode(*tok, prompt_text, {true, parse_special});
    kv.quant = fastinfer::kv::parse_quant(kv_quant);
    kv.layout = fastinfer::parse_kv_layout(kv_layout);
    fastinfer::LlamaWeights lw = fastinfer::load_model(model_spec, load);
    // The KV cache holds what this run asks for, at most the model's context
    // (--ctx-size sets that context itself).
    if (load.max_context == 0)
      fe::fit_context(lw.config, std::int64_t(prompt.size()) + params.max_new_tokens + kDraftRoom);
    fastinfer::LlamaModel<> model(std::move(lw), {threads, 0, kv});
    fastinfer::validate_generation(model.config(), prompt, params);
    const bool medusa = spec.kind == "medusa", eagle = spec.kind == "eagle", mtp = spec.kind == "mtp";
    const auto drafter = medusa || eagle || mtp ? nullptr
                                : fe::make_drafter(spec, model_spec, model.config(), fastinfer::sampling_params(params),
                                                   threads, &model);
    FASTINFER_CHECK(!calm.enabled() || (!drafter && !medusa && !eagle && !mtp), fastinfer::InvalidArgument,
                    "--early-exit-threshold / --early-exit-patience (lossy) do not combine with --spec");
    fastinfer::ConfidentExit<fastinfer::LlamaModel<>> calm_model(model, calm);  // InvalidArgument on bad options
    fastinfer::speculative::SpeculativeOptions spec_options{spec_k};
    fastinfer::speculative::AdaptiveDraftLength adaptive(spec_k);
    if (spec_auto) spec_options.adaptive = &adaptive;
    spec_options.rule = fe::parse_acceptance_rule(spec_rule);
    if (spec_options.rule == fastinfer::speculative::AcceptanceRule::Coupled) {
      // A model drafter then draws with the target's coins (draft_model.hpp).
      if (auto* dm = dynamic_cast<fastinfer::speculative::DraftModel<fastinfer::LlamaModel<>>*>(drafter.get()))
        dm->set_rule(spec_options.rule);
      if (auto* ee = dynamic_cast<fastinfer::speculative::EarlyExitDrafter<fastinfer::LlamaModel<>>*>(drafter.get()))
        ee->set_rule(spec_options.rule);
    }
    fastinfer::ForwardProfiler profiler;
    if (profile || !profile_json.empty()) model.set_profiler(&profiler);
    std::ofstream profile_out;
    if (!profile_json.empty()) {  // before generating: a bad path fails fast
      profile_out.open(profile_json);
      FASTINFER_CHECK(profile_out.is_open(), fastinfer::InvalidArgument, "cannot open --profile-json file '",
                      profile_json, "' for writing");
    }
    auto heads = medusa ? fe::medusa_heads_from_flag(medusa_heads, model.config())
                        : fastinfer::speculative::MedusaHeads();
    // Read before any output: a bad tree file is one error line, not half a run.
    fastinfer::speculative::MedusaOptions medusa_opts;
    if (medusa) {
      medusa_opts = fe::medusa_options_from_flag(medusa_tree, heads.num_heads());
      medusa_opts.rule = spec_options.rule;
      // auto[:N]: each step's tree depth (0..N, at most the heads) as dynamic
      // speculation chooses; without auto the full depth every step.
      if (spec_auto) medusa_opts.adaptive = &adaptive;
    }

    auto eagle_head = eagle ? fe::eagle_head_from_flag(eagle_heads, model.config())
                            : fastinfer::speculative::EagleHead();
    auto mtp_modules = mtp ? fe::mtp_heads_from_flag(mtp_heads, model.config()) : fastinfer::speculative::MtpHeads();
    eagle_opts.rule = spec_options.rule;
    if (spec_auto) eagle_opts.adaptive = &adaptive;  // each step's tree depth, as for Medusa

    std::int32_t previous = prompt.back();
    // Byte pieces arrive one token at a time: the stream holds back a
    // character's first bytes and turns bytes that form none into U+FFFD.
    fastinfer::utf8::Stream text_out;
    if (tok && !print_ids) {
      std::printf("%s", tok->decode(prompt).c_str());
    } else if (!print_ids) {
      std::printf("prompt:");
      for (auto id : prompt) std::printf(" %d", int(id));
      std::printf("\ngenerated:");
    }
    bool first = true;
    auto on_token = [&](std::int32_t id) {
      if (tok && !print_ids) std::printf("%s", text_out.push(tok->decode_token(previous, id)).c_str());
      else std::printf(print_ids && first ? "%d" : " %d", int(id));
      previous = id;
      first = false;
      if (!print_ids) std::fflush(stdout);
    };
    fastinfer::speculative::ModelTarget<fastinfer::LlamaModel<>> target(model);
    const auto gen_start = std::chrono::steady_clock::now();
    const auto spec_result =
        medusa    ? fastinfer::speculative::medusa_generate(model, heads, prompt, params, medusa_opts, on_token)
        : eagle   ? fastinfer::speculative::eagle_generate(model, eagle_head, prompt, params, eagle_opts, on_token)
        : mtp     ? fastinfer::speculative::mtp_generate(model, mtp_modules, prompt, params, eagle_opts, on_token)
        : drafter ? fastinfer::speculative::speculative_generate(target, *drafter, prompt, params, spec_options, on_token)
        : calm.enabled()
            ? fastinfer::speculative::plain_as_speculative(fastinfer::generate(calm_model, prompt, params, on_token))
            : fastinfer::speculative::plain_as_speculative(fastinfer::generate(model, prompt, params, on_token));
    const double gen_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - gen_start).count();
    const auto& result = spec_result.generation;
    if (tok && !print_ids) std::printf("%s", text_out.finish().c_str());
    std::printf("\n");
    std::fflush(stdout);

    if (stats_json) {
      const char* one_row_walk = fastinfer::cpu::one_row_walk_name(fastinfer::cpu::one_row_walk());
      nlohmann::json stats = {{"prompt_tokens", result.prompt_tokens},
                              {"new_tokens", result.tokens.size()},
                              {"prefill_tok_s", result.prefill_tok_s()},
                              {"decode_tok_s", result.decode_tok_s()},
                              {"ttft_ms", result.ttft_seconds * 1e3},
                              {"weights_bytes", model.weights_bytes()},
                              {"kv_bytes", model.kv_bytes()},
                              {"stopped_by", std::string(fastinfer::stop_reason_name(result.stopped_by))},
                              {"mean_accepted_per_step", spec_result.stats.mean_accepted_per_step()},
                              {"target_forwards", spec_result.stats.target_forwards},
                              {"acceptance_rate", spec_result.stats.acceptance_rate()},
                              {"mean_draft_length", spec_result.stats.mean_draft_length()},
                              {"plain_steps", spec_result.stats.plain_steps},
                              {"cpu_level", fastinfer::cpu::cpu_level_name(fastinfer::cpu::cpu_level())},
                              {"float_kernels", fastinfer::cpu::float_kernel_isa()},
                              {"q8_0_kernels", fastinfer::cpu::q8_0::kernel_isa()},
                              {"elementwise_isa", fastinfer::cpu::isa_name()},
                              {"bf16_dot", fastinfer::cpu::bf16_dot_running()},
                              {"one_row_walk", one_row_walk},
                              {"batch_invariant", fastinfer::cpu::batch_invariant()}};
      if (drafter) stats["spec_k"] = spec_auto ? "auto:" + std::to_string(spec_k) : std::to_string(spec_k);
      if (calm.enabled()) stats["mean_layers"] = calm_model.mean_layers();
      std::fprintf(stderr, "%s\n", stats.dump().c_str());
    } else if (!print_ids) {
      fe::print_kv_size(kProgram, model);
      std::fprintf(stderr, "%zu new tokens (stopped by %s); prefill %.1f tok/s, decode %.1f tok/s\n",
                   result.tokens.size(), std::string(fastinfer::stop_reason_name(result.stopped_by)).c_str(),
                   result.prefill_tok_s(), result.decode_tok_s());
    }
    if (model.profiler()) {
      model.set_profiler(nullptr);
      // The caller's clock is the whole generation: the tokens' callbacks
      // (printing) are in it and in no op.
      const fastinfer::Roofline roof = measure_roofline(threads, roof_gbs, roof_gflops);
      if (profile) std::fprintf(stderr, "%s", profiler.table(roof, gen_seconds).c_str());
      if (!profile_json.empty()) {
        profile_out << profiler.json(roof, gen_seconds) << "\n";
        FASTINFER_CHECK(profile_out.good(), fastinfer::Error, "cannot write the profile to '", profile_json, "'");
      }
    }
    return 0;
  });
}
