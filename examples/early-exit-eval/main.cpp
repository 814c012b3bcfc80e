// fastinfer-early-exit-eval: what early exit buys and costs on one model.
//
// 1. Self-speculation (exact): for each exit layer L, greedy
//    speculative_generate with the EarlyExitDrafter over the prompts:
//    acceptance of the drafts, tokens per verification pass, and decode
//    tokens/s against plain decoding timed in the same loop (the output is
//    the target's either way). This is how --exit-layer is chosen.
// 2. Confidence-gated exit (CALM, lossy): for each threshold (and patience),
//    the plain greedy continuation of every prompt is fed teacher-forced
//    through the exiting model; reported are the mean KL divergence
//    KL(p_full || p_exit) and the top-1 agreement of the next-token
//    distributions against the full model, the mean layers run per token,
//    and free-running decode tokens/s against plain.
// Prompts: the golden cases' prompts in --cases (default: the shared
// tinystories-656k cases, whose vocabulary the inflated stand-ins keep).
// Timings are medians over --repeats alternating runs.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "fastinfer/model/confident_exit.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/logits_agreement.hpp"
#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/speculative/early_exit_drafter.hpp"
#include "fastinfer/speculative/speculative_generate.hpp"

#include "common/cli.hpp"
#include "common/golden.hpp"

namespace {

using Model = fastinfer::LlamaModel<>;
using Tokens = std::vector<std::int32_t>;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Decode tokens/s over all prompts: total tokens after the first / total decode seconds.
template <typename Run>
double decode_rate(const std::vector<Tokens>& prompts, Run run) {
  double tokens = 0, seconds = 0;
  for (const auto& p : prompts) {
    const fastinfer::GenerationResult r = run(p);
    tokens += double(r.tokens.size()) - 1.0;
    seconds += r.decode_seconds;
  }
  return seconds > 0 ? tokens / seconds : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Early exit: self-speculative acceptance per exit layer, and CALM's quality and speed per threshold."};
  std::string model_spec = "inflate:" FASTINFER_SHARED_DIR "/models/tinystories-656k:110M", weights = "bf16";
  std::string cases_dir = FASTINFER_SHARED_DIR "/golden/tinystories-656k/cases";
  int threads = 2, tokens = 128, spec_k = 4, repeats = 3, min_layer = 1;
  std::vector<int> exit_layers, patiences = {2, 3};
  std::vector<float> thresholds = {0.5f, 0.7f, 0.8f, 0.9f, 0.95f, 0.99f};
  app.add_option("--model", model_spec, "load_model spec")->capture_default_str();
  app.add_option("--weights", weights, "weights dtype")->check(CLI::IsMember(fastinfer::examples::weight_choices()))->capture_default_str();
  app.add_option("--cases", cases_dir, "golden cases whose prompts are used")->capture_default_str();
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--tokens", tokens, "new tokens per prompt")->check(CLI::Range(2, 1 << 20))->capture_default_str();
  app.add_option("--spec-k", spec_k, "drafts per step")->check(CLI::Range(1, 15))->capture_default_str();
  app.add_option("--repeats", repeats, "timed runs (median)")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_option("--exit-layers", exit_layers, "exit layers to try (default: every layer)");
  app.add_option("--thresholds", thresholds, "CALM top-1 probability thresholds")->capture_default_str();
  app.add_option("--patience", patiences, "patience values (same top-1 after K layers)")->capture_default_str();
  app.add_option("--min-layer", min_layer, "first layer a token may leave at")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    fastinfer::LoadOptions load;
    load.weight_dtype = fastinfer::parse_weight_dtype(weights);
    load.threads = threads;
    Model model(fastinfer::load_model(model_spec, load), fastinfer::ModelOptions{threads, 32});
    const int layers = model.config().n_layers, vocab = model.config().vocab_size;
    std::vector<Tokens> prompts;
    for (const auto& c : fastinfer::examples::read_golden_cases(cases_dir)) prompts.push_back(c.prompt);
    FASTINFER_CHECK(!prompts.empty(), fastinfer::InvalidArgument, "no golden cases in ", cases_dir);
    fastinfer::GenerationParams params;
    params.max_new_tokens = tokens;
    auto plain = [&](const Tokens& p) { return fastinfer::generate(model, p, params); };
    std::printf("model %s (%s weights, %d layers, vocab %d), %zu prompts x %d tokens, %d threads\n",
                model_spec.c_str(), weights.c_str(), layers, vocab, prompts.size(), tokens, threads);

    // ---- 1. self-speculation per exit layer ----
    if (exit_layers.empty())
      for (int l = 1; l <= layers; ++l) exit_layers.push_back(l);
    std::printf("\nself-speculative early exit, greedy, k = %d\n", spec_k);
    std::printf("| exit layer | acceptance | tokens / pass | decode tok/s | plain tok/s | ratio |\n|---|---|---|---|---|---|\n");
    fastinfer::speculative::ModelTarget<Model> target(model);
    for (int l : exit_layers) {
      fastinfer::speculative::EarlyExitDrafter<Model> drafter(model, l, {});
      fastinfer::speculative::SpeculativeStats st;
      std::vector<double> spec_rate, plain_rate;
      for (int rep = 0; rep < repeats; ++rep) {
        plain_rate.push_back(decode_rate(prompts, plain));
        st = {};
        spec_rate.push_back(decode_rate(prompts, [&](const Tokens& p) {
          auto r = fastinfer::speculative::speculative_generate(target, drafter, p, params,
                                                         fastinfer::speculative::SpeculativeOptions{spec_k});
          st.drafted += r.stats.drafted, st.accepted += r.stats.accepted;
          st.step_tokens += r.stats.step_tokens, st.target_forwards += r.stats.target_forwards;
          return r.generation;
        }));
      }
      const double s = median(spec_rate), pl = median(plain_rate);
      std::printf("| %d | %.3f | %.2f | %.1f | %.1f | %.2fx |\n", l, st.acceptance_rate(), st.mean_accepted_per_step(),
                  s, pl, pl > 0 ? s / pl : 0.0);
      std::fflush(stdout);
    }

    // ---- 2. confidence-gated exit per threshold / patience ----
    std::vector<Tokens> refs;
    for (const auto& p : prompts) refs.push_back(plain(p).tokens);
    std::vector<fastinfer::ConfidentExitOptions> gates;
    for (float t : thresholds) gates.push_back({t, 0, min_layer});
    for (int k : patiences) gates.push_back({0.0f, k, min_layer});
    std::printf("\nconfidence-gated early exit (lossy), min layer %d: teacher-forced on the full model's greedy text\n",
                min_layer);
    std::printf("| gate | mean layers | top-1 agreement | mean KL | decode tok/s | plain tok/s | ratio |\n"
                "|---|---|---|---|---|---|---|\n");
    std::vector<float> full;
    for (const auto& gate : gates) {
      fastinfer::ConfidentExit<Model> calm(model, gate);
      fastinfer::LogitsAgreement agreement;
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        const Tokens& p = prompts[i];
        const Tokens& ref = refs[i];
        const int n = int(ref.size()) - 1;  // rows after feeding ref[0 .. n)
        full.resize(std::size_t(std::max(n, 0)) * std::size_t(vocab));
        model.forward_prefill(p, 0);
        for (int t = 0; t < n; ++t) {
          const float* row = model.forward_decode(ref[std::size_t(t)], int(p.size()) + t);
          std::copy(row, row + vocab, full.begin() + std::ptrdiff_t(t) * vocab);
        }
        calm.forward_prefill(p, 0);
        for (int t = 0; t < n; ++t)
          agreement.add(full.data() + std::size_t(t) * std::size_t(vocab),
                        calm.forward_decode(ref[std::size_t(t)], int(p.size()) + t), vocab);
      }
      const double mean_layers = calm.mean_layers();
      std::vector<double> calm_rate, plain_rate;
      for (int rep = 0; rep < repeats; ++rep) {
        plain_rate.push_back(decode_rate(prompts, plain));
        calm_rate.push_back(decode_rate(prompts, [&](const Tokens& p) { return fastinfer::generate(calm, p, params); }));
      }
      const double c = median(calm_rate), pl = median(plain_rate);
      char name[64];
      if (gate.threshold > 0) std::snprintf(name, sizeof name, "p >= %.2f", double(gate.threshold));
      else std::snprintf(name, sizeof name, "patience %d", gate.patience);
      std::printf("| %s | %.2f | %.3f | %.4f | %.1f | %.1f | %.2fx |\n", name, mean_layers,
                  agreement.top1_agreement(), agreement.mean_kl(), c, pl, pl > 0 ? c / pl : 0.0);
      std::fflush(stdout);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fastinfer-early-exit-eval: error: %s\n", e.what());
    return 1;
  }
}
