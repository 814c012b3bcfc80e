// Checks every tree drafter's generation test makes (EAGLE, MTP): greedy
// output against the golden cases, the coupled rule against plain
// sampling, and the exact rule's first verified token against the target's
// exact marginal. `run(model, prompt, params)`
// returns the drafter's SpeculativeResult.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "golden.hpp"

namespace fastinfer::testing {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;  // ~30x slower: statistical tests check memory on few draws
#else
constexpr bool kSanitized = false;
#endif

// The drafters' tests run the model on one thread with 32-row passes.
using SpecTestModel = LlamaModel<>;
inline SpecTestModel load(const std::string& path) { return SpecTestModel(load_model(path), ModelOptions{1, 32}); }

// Every golden case of cases_dir: tokens and stop reason equal the case's,
// accepted <= drafted <= budget per pass. Returns the drafts accepted.
template <typename Model, typename Run>
std::int64_t check_golden_speculation(Model& model, const std::filesystem::path& cases_dir, int budget, Run&& run) {
  const auto cases = read_golden_cases(cases_dir);
  REQUIRE(!cases.empty());
  std::int64_t accepted = 0;
  for (const auto& c : cases) {
    INFO("case " << c.name);
    GenerationParams p;
    p.max_new_tokens = c.max_new_tokens;
    const auto r = run(model, c.prompt, p);
    CHECK(r.generation.tokens == c.continuation);
    CHECK(stop_reason_name(r.generation.stopped_by) == c.stopped_by);
    CHECK(r.stats.accepted <= r.stats.drafted);
    CHECK(r.stats.drafted <= std::int64_t(budget) * r.stats.target_forwards);
    accepted += r.stats.accepted;
  }
  return accepted;
}

// The coupled rule at temperature 0.8 from prompt {1}, max_new tokens, with
// seeds 1 (plain), 2 (top-k 40) and 5 (top-p 0.9): every run's tokens and
// stop reason are plain sampling's. Returns the drafts offered.
template <typename Model, typename Run>
std::int64_t check_coupled_is_plain(Model& model, int max_new, Run&& run) {
  GenerationParams p;
  p.max_new_tokens = max_new;
  p.temperature = 0.8f;
  std::int64_t drafted = 0;
  for (std::uint64_t seed : {1, 2, 5}) {
    p.seed = seed;
    p.top_k = seed == 2 ? 40 : 0;
    p.top_p = seed == 5 ? 0.9f : 1.0f;
    const auto plain = generate(model, {1}, p);
    const auto r = run(model, std::vector<std::int32_t>{1}, p);
    INFO("seed " << seed);
    CHECK(r.generation.tokens == plain.tokens);
    CHECK(r.generation.stopped_by == plain.stopped_by);
    drafted += r.stats.drafted;
  }
  return drafted;
}

struct MarginalCheck {
  double tv = 0, tv_uniform = 0;  // to the exact marginal; the uniform's over its support
  int support = 0;
  std::int64_t accepted = 0;
};

// Token 2 (the first verified one: token 1 comes from the prefill) of n
// runs with seeds 11.., against the exact marginal sum_t1 p(t1) p(t2 | t1).
template <typename Model, typename Run>
MarginalCheck second_token_marginal(Model& model, const std::vector<std::int32_t>& prompt, GenerationParams p, int n,
                                    Run&& run) {
  const int vocab = model.config().vocab_size;
  cpu::SamplerWorkspace ws(vocab);
  const SamplingParams sp = sampling_params(p);
  std::vector<float> p1(static_cast<std::size_t>(vocab)), p2(static_cast<std::size_t>(vocab));
  model.reset();
  cpu::sampling_distribution(model.forward_prefill(prompt, 0), vocab, sp, p1.data(), ws);
  std::vector<double> marginal(std::size_t(vocab), 0.0);
  for (int t1 = 0; t1 < vocab; ++t1) {
    if (p1[std::size_t(t1)] <= 0.0f) continue;
    std::vector<std::int32_t> ext = prompt;
    ext.push_back(t1);
    model.reset();
    cpu::sampling_distribution(model.forward_prefill(ext, 0), vocab, sp, p2.data(), ws);
    for (int t = 0; t < vocab; ++t) marginal[std::size_t(t)] += double(p1[std::size_t(t1)]) * double(p2[std::size_t(t)]);
  }
  std::vector<double> seen(std::size_t(vocab), 0.0);
  MarginalCheck m;
  for (int s = 0; s < n; ++s) {
    p.seed = std::uint64_t(s) + 11;
    const auto r = run(model, prompt, p);
    REQUIRE(r.generation.tokens.size() >= 2);
    seen[std::size_t(r.generation.tokens[1])] += 1.0 / n;
    m.accepted += r.stats.accepted;
  }
  for (int t = 0; t < vocab; ++t) {
    m.tv += std::abs(seen[std::size_t(t)] - marginal[std::size_t(t)]) / 2;
    m.support += marginal[std::size_t(t)] > 0;
  }
  for (int t = 0; t < vocab; ++t)
    if (marginal[std::size_t(t)] > 0) m.tv_uniform += std::abs(1.0 / m.support - marginal[std::size_t(t)]) / 2;
  return m;
}

}  // namespace fastinfer::testing
