// EAGLE generation: greedy output equals plain greedy output on the golden
// cases of stories260K and tinystories-656k (random heads, and the committed
// trained head data/heads/tinystories-656k.eagle when present), under the
// coupled rule it emits plain sampling's tokens bit for bit, under the exact
// rule the first verified token is distributed as the target's, the tree a
// step drafts stays within its budget, and bad arguments are refused.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/eagle_flags.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/eagle_generate.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"
#include "spec_checks.hpp"

namespace {

using fastinfer::GenerationParams;
using fastinfer::testing::kSanitized;
using Model = fastinfer::testing::SpecTestModel;
using fastinfer::testing::load;
namespace speculative = fastinfer::speculative;

// The trained head committed with the sources (tools/train_eagle.py), or
// the file FASTINFER_EAGLE_HEAD names.
std::filesystem::path trained_head() {
  return fastinfer::testing::heads_path("FASTINFER_EAGLE_HEAD", "tinystories-656k.eagle");
}

speculative::EagleOptions wide_tree() {
  speculative::EagleOptions o;
  o.tree = speculative::EagleTreeConfig{5, 6, 24};
  return o;
}

std::int64_t check_golden(const std::filesystem::path& model_path, const std::filesystem::path& cases_dir,
                          const std::string& head_spec, const speculative::EagleOptions& o) {
  Model model = load(model_path.string());
  speculative::EagleHead head = fastinfer::examples::eagle_head_from_flag(head_spec, model.config());
  INFO("head " << head_spec);
  return fastinfer::testing::check_golden_speculation(model, cases_dir, o.tree.budget, [&](Model& m, const auto& prompt, const auto& p) {
    return speculative::eagle_generate(m, head, prompt, p, o);
  });
}

}  // namespace

TEST_CASE("greedy EAGLE reproduces the stories260K golden cases (random heads, default and wide trees)") {
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases, "golden/cases");
  check_golden(model, cases, "random:1", {});
  check_golden(model, cases, "random:2", wide_tree());
}

TEST_CASE("greedy EAGLE reproduces the tinystories-656k golden cases (random heads)") {
  FASTINFER_REQUIRE_SHARED(model, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  check_golden(model, cases, "random:1", {});
  check_golden(model, cases, "random:3", wide_tree());
}

TEST_CASE("greedy EAGLE with the committed trained head reproduces the tinystories-656k golden cases") {
  FASTINFER_REQUIRE_SHARED(model, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  FASTINFER_REQUIRE_HEADS(head, "FASTINFER_EAGLE_HEAD", "tinystories-656k.eagle");
  // A trained head is accepted often: the KV bookkeeping off the chain runs.
  CHECK(check_golden(model, cases, head.string(), {}) > 50);
  CHECK(check_golden(model, cases, head.string(), wide_tree()) > 50);
}

TEST_CASE("EAGLE output equals plain generation at the sequence-length limit and with tiny budgets") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  speculative::EagleHead head = fastinfer::examples::eagle_head_from_flag("random:5", model.config());
  const std::vector<std::int32_t> near_end(505, 0);
  std::vector<std::int32_t> looped = {1};
  for (int i = 0; i < 40; ++i) looped.push_back(std::int32_t(100 + i % 3));
  std::int64_t accepted = 0;
  for (const auto& pr : {near_end, looped})
    for (int budget : {0, 1, 2, 3, 7, 300}) {
      GenerationParams p;
      p.max_new_tokens = budget;
      const auto plain = fastinfer::generate(model, pr, p);
      for (int nodes : {0, 1, 31}) {
        speculative::EagleOptions o;
        o.tree.budget = nodes;
        const auto r = speculative::eagle_generate(model, head, pr, p, o);
        INFO("max_new_tokens " << budget << ", prompt length " << pr.size() << ", nodes " << nodes);
        CHECK(r.generation.tokens == plain.tokens);
        CHECK(r.generation.stopped_by == plain.stopped_by);
        accepted += r.stats.accepted;
      }
    }
  CHECK(accepted > 0);  // the looped prompt is easy even for a random head
}

TEST_CASE("EAGLE under the coupled rule emits plain sampling's tokens with the same seed") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  Model model = load(model_path.string());
  std::int64_t drafted = 0;
  const std::vector<std::string> heads = {"random:1", std::filesystem::exists(trained_head()) ? trained_head().string() : "random:2"};
  for (const std::string& hs : heads) {
    speculative::EagleHead head = fastinfer::examples::eagle_head_from_flag(hs, model.config());
    speculative::EagleOptions o;
    o.rule = speculative::AcceptanceRule::Coupled;
    INFO("head " << hs);
    drafted += fastinfer::testing::check_coupled_is_plain(model, 100, [&](Model& m, const auto& pr, const auto& p) {
      return speculative::eagle_generate(m, head, pr, p, o);
    });
  }
  CHECK(drafted > 0);
}

TEST_CASE("EAGLE under the exact rule: the first verified token is distributed as the target's") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  speculative::EagleHead head = fastinfer::examples::eagle_head_from_flag("random:4", model.config());
  const std::vector<std::int32_t> prompt = {1, 365, 1009 % 512, 260};
  GenerationParams p;
  p.max_new_tokens = 3;  // token 1 from the prefill; 2 (and maybe 3) from one verified tree of depth 1
  p.temperature = 1.0f;
  p.top_k = 6;
  speculative::EagleOptions o;
  o.tree = speculative::EagleTreeConfig{1, 6, 6};  // all six candidates the filter allows, as siblings
  const int n = kSanitized ? 200 : 3000;
  const auto m = fastinfer::testing::second_token_marginal(model, prompt, p, n, [&](Model& mm, const auto& pr, const auto& pp) {
    return speculative::eagle_generate(mm, head, pr, pp, o);
  });
  const double tv = m.tv, tv_uniform = m.tv_uniform;
  const std::int64_t accepted = m.accepted;
  INFO("TV to the exact marginal " << tv << " over " << m.support << " tokens; accepted drafts " << accepted);
  CHECK(accepted > n / 10);  // the candidates are the filter's tokens: accepted often
  if (kSanitized) return;    // 200 draws say nothing about the distribution
  // Sampling noise at n = 3000 over <= 36 tokens: expected TV ~0.03-0.05.
  CHECK(tv < 0.07);
  CHECK(tv_uniform > 3 * tv);  // a wrong distribution would be seen
}

TEST_CASE("an EAGLE step drafts within its budget and depth, and eagle_generate refuses bad arguments") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  Model model = load(model_path.string());
  speculative::EagleHead head = fastinfer::examples::eagle_head_from_flag("random:1", model.config());
  const std::vector<std::int32_t> prompt = {1, 400, 50, 73, 900};
  std::vector<float> root(std::size_t(model.config().dim));
  const std::vector<std::int32_t> next = {400, 50, 73, 900, 7};
  std::vector<float> all(std::size_t(5 * model.config().dim));
  model.reset();
  model.forward_prefill(prompt, 0);  // one chunk: every row's feature
  std::copy(model.last_features(), model.last_features() + all.size(), all.begin());
  head.reset();
  head.commit(model.weights(), all.data(), next.data(), 5, root.data());
  speculative::EagleDraftWorkspace ws;
  for (int depth : {1, 3, 6})
    for (int top_k : {1, 3, 5})
      for (int budget : {0, 4, 17}) {
        const auto tree = speculative::eagle_draft_tree(head, model.weights(), root.data(), depth, top_k, budget, ws);
        INFO("depth " << depth << ", top_k " << top_k << ", budget " << budget);
        CHECK(tree.size() <= budget);
        CHECK(tree.size() == std::min(budget, ws.builder.size()));
        CHECK(head.tree_rows() <= (depth - 1) * top_k);
        CHECK_NOTHROW(tree.validate(model.config().vocab_size));
        for (int d : speculative::tree_depths(tree)) CHECK(d <= depth);
      }
  // Bad arguments: wrong head shape, empty prompt, bad tree, lossy rule.
  fastinfer::LlamaConfig other = model.config();
  other.dim += 8;
  speculative::EagleHead wrong = speculative::EagleHead::random(1, speculative::EagleHeadShape::like(other));
  CHECK_THROWS_AS(speculative::eagle_generate(model, wrong, {1}, GenerationParams{}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(speculative::eagle_generate(model, head, {}, GenerationParams{}), fastinfer::InvalidArgument);
  speculative::EagleOptions o;
  o.tree.top_k = 0;
  CHECK_THROWS_AS(speculative::eagle_generate(model, head, {1}, GenerationParams{}, o), fastinfer::InvalidArgument);
  o = {};
  o.rule = speculative::AcceptanceRule::TypicalLossy;
  CHECK_THROWS_WITH(speculative::eagle_generate(model, head, {1}, GenerationParams{}, o), Catch::Contains("lossy"));
  speculative::EagleHead empty;
  CHECK_THROWS_WITH(speculative::eagle_generate(model, empty, {1}, GenerationParams{}), Catch::Contains("empty"));
}

TEST_CASE("EAGLE timings count every step and drafted row and change no token") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  Model model = load(model_path.string());
  speculative::EagleHead head = fastinfer::examples::eagle_head_from_flag("random:1", model.config());
  const std::vector<std::int32_t> prompt = {1, 400, 50, 73, 900};
  GenerationParams p;
  p.max_new_tokens = 40;
  speculative::EagleOptions o;
  const auto plain = speculative::eagle_generate(model, head, prompt, p, o);
  speculative::EagleTimings t;
  o.timings = &t;
  const auto timed = speculative::eagle_generate(model, head, prompt, p, o);
  CHECK(timed.generation.tokens == plain.generation.tokens);
  CHECK(t.steps == timed.stats.target_forwards);
  // Per step: one root row through the classifier, then (depth - 1) levels of
  // at most top_k rows each through the head and the classifier; a step with
  // one token left drafts nothing (the last one may).
  const std::int64_t roots = t.lm_rows - t.head_rows;
  CHECK(roots <= t.steps);
  CHECK(roots >= t.steps - 1);
  CHECK(t.head_rows > 0);
  CHECK(t.head_rows <= t.steps * std::int64_t((o.tree.depth - 1) * o.tree.top_k));
  for (double s : {t.head, t.lm_head, t.tree, t.pass, t.verify, t.commit}) CHECK(s >= 0.0);
  CHECK(t.pass > 0.0);
  // The parts are disjoint laps inside the generation's own clock.
  CHECK(t.head + t.lm_head + t.tree + t.pass + t.verify + t.commit <= timed.generation.decode_seconds + 1e-3);
}
