// Greedy speculative generation equals plain greedy generation token for
// token, for every drafter, every golden case of stories260K and of
// tinystories-656k, and k in {1, 2, 4, 8}; the stop reason matches too. The
// drafters include a deliberately bad one (a random model with the same
// vocabulary) so that rejections and rollbacks happen all the time.
// Sampling runs with a seed repeat exactly.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/spec/draft_model.hpp"
#include "fastinfer/spec/lookahead_pool.hpp"
#include "fastinfer/spec/prompt_lookup.hpp"
#include "fastinfer/spec/speculative_generate.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace {

using fastinfer::GenerationParams;
using fastinfer::LlamaModel;
using Model = LlamaModel<>;
namespace spec = fastinfer::spec;

using Case = fastinfer::testing::GoldenCase;

Model load(const std::string& path, std::optional<fastinfer::DType> dtype = std::nullopt) {
  fastinfer::LoadOptions o;
  o.weight_dtype = dtype;
  return Model(fastinfer::load_model(path, o), fastinfer::ModelOptions{1, 32});
}

// Every drafter for one k; `draft_paths` are models with the target's vocabulary.
std::vector<std::pair<std::string, std::unique_ptr<spec::Drafter>>> drafters(int k, int vocab,
                                                                               const std::vector<std::string>& models) {
  std::vector<std::pair<std::string, std::unique_ptr<spec::Drafter>>> out;
  out.emplace_back("prompt-lookup", std::make_unique<spec::PromptLookup>());
  out.emplace_back("lookahead", std::make_unique<spec::LookaheadPool>(spec::LookaheadConfig{5, k + 1, 5}, vocab));
  for (const auto& m : models) {
    const bool bf16 = m.rfind("bf16:", 0) == 0;
    const std::string path = bf16 ? m.substr(5) : m;
    out.emplace_back("draft " + m, std::make_unique<spec::DraftModel<Model>>(
                                       load(path, bf16 ? std::optional(fastinfer::DType::BF16) : std::nullopt),
                                       fastinfer::cpu::SamplingParams{}));
  }
  return out;
}

void check_golden(const std::filesystem::path& model_path, const std::filesystem::path& cases_dir, int k,
                  const std::vector<std::string>& draft_models) {
  Model target = load(model_path.string());
  spec::ModelTarget<Model> adapter(target);
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  REQUIRE(!cases.empty());
  {
    auto ds = drafters(k, target.config().vocab_size, draft_models);
    for (auto& [name, drafter] : ds)
      for (const Case& c : cases) {
        INFO("drafter " << name << ", k " << k << ", case " << c.name);
        GenerationParams p;
        p.max_new_tokens = c.max_new_tokens;
        const auto r = spec::speculative_generate(adapter, *drafter, c.prompt, p, spec::SpeculativeOptions{k});
        CHECK(r.generation.tokens == c.continuation);
        CHECK(fastinfer::stop_reason_name(r.generation.stopped_by) == c.stopped_by);
        // Every token but the first (picked from the prefill) comes from a verification pass.
        CHECK(r.stats.step_tokens + 1 == std::int64_t(r.generation.tokens.size()));
        CHECK(r.stats.target_forwards <= r.stats.step_tokens + 1);  // + 1: a pass that ends on EOS emits nothing
        CHECK(r.stats.accepted <= r.stats.drafted);
      }
  }
}

}  // namespace

// One test case per k keeps each under the time budget (ASan included).
#define FASTINFER_SPEC_GOLDEN(K, RANDOM_DRAFT)                                                              \
  TEST_CASE("greedy speculation reproduces the stories260K golden cases, every drafter, k = " #K) {        \
    FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");                                              \
    FASTINFER_REQUIRE_SHARED(cases, "golden/cases");                                                        \
    /* The target in bf16 (a self-draft); at one k also a random model of the same vocabulary, whose */    \
    /* drafts are nearly all rejected: rollback on every step. */                                           \
    std::vector<std::string> drafts = {"bf16:" + model.string()};                                           \
    if (RANDOM_DRAFT) drafts.push_back("synthetic:tiny");                                                   \
    check_golden(model, cases, K, drafts);                                                                  \
  }                                                                                                         \
  TEST_CASE("greedy speculation reproduces the tinystories-656k golden cases, every drafter, k = " #K) {   \
    FASTINFER_REQUIRE_SHARED(model, "models/tinystories-656k");                                             \
    FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");                                       \
    check_golden(model, cases, K, {"bf16:" + model.string()});                                              \
  }

FASTINFER_SPEC_GOLDEN(1, false)
FASTINFER_SPEC_GOLDEN(2, false)
FASTINFER_SPEC_GOLDEN(4, true)
FASTINFER_SPEC_GOLDEN(8, false)

TEST_CASE("speculative output equals plain generation at the sequence-length limit and with tiny budgets") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model target = load(model_path.string());
  spec::ModelTarget<Model> adapter(target);
  spec::PromptLookup lookup;
  const std::vector<std::int32_t> prompt(500, 0);  // leaves 12 positions: stops on seq_len inside a run
  std::vector<std::int32_t> looped = {1};
  for (int i = 0; i < 30; ++i) looped.push_back(std::int32_t(100 + i % 5));
  for (const auto& pr : {prompt, looped})
    for (int budget : {0, 1, 2, 3, 7, 300}) {
      GenerationParams p;
      p.max_new_tokens = budget;
      const auto plain = fastinfer::generate(target, pr, p);
      for (int k : {1, 3, 8}) {
        const auto r = spec::speculative_generate(adapter, lookup, pr, p, spec::SpeculativeOptions{k});
        INFO("budget " << budget << " k " << k << " prompt length " << pr.size());
        CHECK(r.generation.tokens == plain.tokens);
        CHECK(r.generation.stopped_by == plain.stopped_by);
      }
    }
}

TEST_CASE("seeded speculative sampling repeats exactly and differs across seeds") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model target = load(model_path.string());
  spec::ModelTarget<Model> adapter(target);
  GenerationParams p;
  p.max_new_tokens = 120;
  p.temperature = 0.9f;
  p.top_k = 40;
  p.top_p = 0.95f;
  const std::vector<std::int32_t> prompt = {1};
  auto run = [&](std::uint64_t seed, spec::Drafter& d) {
    p.seed = seed;
    return spec::speculative_generate(adapter, d, prompt, p, spec::SpeculativeOptions{4});
  };
  spec::DraftModel<Model> self(load(model_path.string(), fastinfer::DType::BF16), fastinfer::sampling_params(p));
  spec::PromptLookup lookup;
  for (spec::Drafter* d : {static_cast<spec::Drafter*>(&self), static_cast<spec::Drafter*>(&lookup)}) {
    const auto a = run(7, *d), b = run(7, *d), c = run(8, *d);
    CHECK(a.generation.tokens == b.generation.tokens);
    CHECK(a.stats.accepted == b.stats.accepted);
    CHECK(a.generation.tokens != c.generation.tokens);
  }
  // The self-draft proposes from (nearly) the target's own distribution: most drafts are kept.
  p.seed = 3;
  spec::DraftModel<Model> self3(load(model_path.string(), fastinfer::DType::BF16), fastinfer::sampling_params(p));
  const auto s = spec::speculative_generate(adapter, self3, prompt, p, spec::SpeculativeOptions{4});
  CHECK(s.stats.acceptance_rate() > 0.8);
}

TEST_CASE("speculative_generate rejects bad arguments before touching the model") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model target = load(model_path.string());
  spec::ModelTarget<Model> adapter(target);
  spec::PromptLookup lookup;
  GenerationParams p;
  CHECK_THROWS_AS(spec::speculative_generate(adapter, lookup, {1}, p, spec::SpeculativeOptions{-1}),
                  fastinfer::InvalidArgument);
  CHECK_THROWS_AS(spec::speculative_generate(adapter, lookup, {1, 9999}, p), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(spec::speculative_generate(adapter, lookup, {}, p), fastinfer::InvalidArgument);
}
