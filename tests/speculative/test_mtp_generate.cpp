// MTP generation: greedy output equals plain greedy output on the golden
// cases of stories260K and tinystories-656k (random modules, and the
// committed trained modules data/heads/tinystories-656k.mtp when present),
// the coupled rule emits plain sampling's tokens bit for bit, the exact
// rule's first verified token is distributed as the target's, a draft tree
// is at most one level per module deep and bad arguments are refused.
// An opt-in case (FASTINFER_RUN_TRAINER=1, needs python3-torch; `ctest -L
// opt-in -R mtp`) runs tools/train_mtp.py on a small budget and checks its
// file loads and keeps greedy MTP exact. Kept small for CI: the EAGLE tests already cover the shared loop's edge
// cases at length; these cover what MTP changes (a module per level, the
// cascade of committed rows).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/eagle_flags.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/mtp_generate.hpp"
#include "shared_dir.hpp"
#include "spec_checks.hpp"
#include "trainer_run.hpp"

namespace {

using fastinfer::GenerationParams;
using fastinfer::testing::kSanitized;
using Model = fastinfer::testing::SpecTestModel;
using fastinfer::testing::load;
namespace speculative = fastinfer::speculative;

std::filesystem::path trained_heads() {
  return fastinfer::testing::heads_path("FASTINFER_MTP_HEADS", "tinystories-656k.mtp");
}

// Under the sanitizers (~30x slower) a 24-node pass is dear: memory is
// checked on the default tree, which still drafts with modules 1..3.
speculative::MtpOptions wide_tree() {
  speculative::MtpOptions o;
  if (!kSanitized) o.tree = speculative::EagleTreeConfig{4, 6, 24};
  return o;
}

std::int64_t check_golden(Model& model, const std::filesystem::path& cases_dir, const std::string& spec,
                          const speculative::MtpOptions& o) {
  speculative::MtpHeads heads = fastinfer::examples::mtp_heads_from_flag(spec, model.config());
  INFO("MTP heads " << spec);
  return fastinfer::testing::check_golden_speculation(model, cases_dir, o.tree.budget, [&](Model& m, const auto& pr, const auto& p) {
    return speculative::mtp_generate(m, heads, pr, p, o);
  });
}

}  // namespace

TEST_CASE("greedy MTP reproduces the stories260K golden cases (random modules, default and wide trees)") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases, "golden/cases");
  Model model = load(model_path.string());
  if (!kSanitized) check_golden(model, cases, "random:1", {});  // wide_tree() is the default there
  check_golden(model, cases, "random:2", wide_tree());
}

TEST_CASE("greedy MTP reproduces the tinystories-656k golden cases (random and trained modules)") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  Model model = load(model_path.string());
  check_golden(model, cases, "random:3", wide_tree());
  FASTINFER_REQUIRE_HEADS(heads, "FASTINFER_MTP_HEADS", "tinystories-656k.mtp");
  // Trained modules are accepted often: deep levels and off-chain KV run.
  CHECK(check_golden(model, cases, heads.string(), {}) > 50);
  if (!kSanitized) CHECK(check_golden(model, cases, heads.string(), wide_tree()) > 50);
}

TEST_CASE("MTP output equals plain generation at the sequence-length limit and with tiny budgets") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  speculative::MtpHeads heads = fastinfer::examples::mtp_heads_from_flag("random:5", model.config(), 2);
  const std::vector<std::int32_t> near_end(505, 0);
  std::vector<std::int32_t> looped = {1};
  for (int i = 0; i < 40; ++i) looped.push_back(std::int32_t(100 + i % 3));
  std::int64_t accepted = 0;
  for (const auto& pr : {near_end, looped, std::vector<std::int32_t>{1}})
    for (int budget : {1, 3, 300}) {
      if (kSanitized && budget == 1) continue;  // the sanitizer build checks memory on the rest
      GenerationParams p;
      p.max_new_tokens = budget;
      const auto plain = fastinfer::generate(model, pr, p);
      for (int nodes : {1, 31}) {
        if (kSanitized && nodes == 31) continue;
        speculative::MtpOptions o;
        o.tree = speculative::EagleTreeConfig{8, 4, nodes};  // deeper than the 2 modules: capped
        const auto r = speculative::mtp_generate(model, heads, pr, p, o);
        INFO("max_new_tokens " << budget << ", prompt length " << pr.size() << ", nodes " << nodes);
        CHECK(r.generation.tokens == plain.tokens);
        CHECK(r.generation.stopped_by == plain.stopped_by);
        CHECK(r.stats.k_sum <= 2 * r.stats.target_forwards);  // tree depth <= module count
        accepted += r.stats.accepted;
      }
    }
  CHECK(accepted > 0);
}

TEST_CASE("MTP under the coupled rule emits plain sampling's tokens with the same seed") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  Model model = load(model_path.string());
  std::int64_t drafted = 0;
  const std::string trained = std::filesystem::exists(trained_heads()) ? trained_heads().string() : "random:2";
  for (const std::string& spec : {std::string("random:1"), trained}) {
    speculative::MtpHeads heads = fastinfer::examples::mtp_heads_from_flag(spec, model.config());
    speculative::MtpOptions o;
    o.rule = speculative::AcceptanceRule::Coupled;
    INFO("heads " << spec);
    drafted += fastinfer::testing::check_coupled_is_plain(model, 60, [&](Model& m, const auto& pr, const auto& p) {
      return speculative::mtp_generate(m, heads, pr, p, o);
    });
  }
  CHECK(drafted > 0);
}

TEST_CASE("MTP under the exact rule: the first verified token is distributed as the target's") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  speculative::MtpHeads heads = fastinfer::examples::mtp_heads_from_flag("random:4", model.config(), 2);
  GenerationParams p;
  p.max_new_tokens = 3;
  p.temperature = 1.0f;
  p.top_k = 6;
  speculative::MtpOptions o;
  o.tree = speculative::EagleTreeConfig{2, 6, 12};  // every candidate at depth 1, module 2 below them
  const int n = kSanitized ? 40 : 1500;
  const auto m = fastinfer::testing::second_token_marginal(model, {1, 365, 497, 260}, p, n,
                                                           [&](Model& mm, const auto& pr, const auto& pp) {
                                                             return speculative::mtp_generate(mm, heads, pr, pp, o);
                                                           });
  INFO("TV to the exact marginal " << m.tv << " over " << m.support << " tokens; accepted drafts " << m.accepted);
  CHECK(m.accepted > n / 10);
  if (kSanitized) return;  // 40 draws check memory, not the distribution
  // Sampling noise at n = 1500 over <= 36 tokens: expected TV ~0.05-0.07.
  CHECK(m.tv < 0.1);
  CHECK(m.tv_uniform > 2.5 * m.tv);
}

TEST_CASE("an MTP tree is at most one level per module, and mtp_generate refuses bad arguments") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  Model model = load(model_path.string());
  const auto& w = model.weights();
  speculative::MtpHeads heads = fastinfer::examples::mtp_heads_from_flag("random:1", model.config(), 3);
  const std::vector<std::int32_t> prompt = {1, 400, 50, 73, 900, 7};
  model.reset();
  model.forward_prefill(prompt.data(), 5, 0);  // one chunk: every row's feature
  std::vector<float> feats(model.last_features(), model.last_features() + 5 * model.config().dim);
  std::vector<float> root(std::size_t(model.config().dim));
  heads.reset();
  heads.commit(w, feats.data(), 5, prompt, root.data());
  speculative::EagleDraftWorkspace ws;
  for (int top_k : {1, 3})
    for (int budget : {4, 17}) {
      const auto tree = speculative::draft_feature_tree(heads, w, root.data(), heads.max_depth(), top_k, budget, ws);
      INFO("top_k " << top_k << ", budget " << budget);
      CHECK(tree.size() == std::min(budget, ws.builder.size()));
      CHECK_NOTHROW(tree.validate(model.config().vocab_size));
      for (int d : speculative::tree_depths(tree)) CHECK(d <= 3);
    }
  // A tree deeper than the modules would need a module that is not there.
  CHECK_THROWS_WITH(speculative::draft_feature_tree(heads, w, root.data(), 4, 2, 8, ws), Catch::Contains("module 4"));
  fastinfer::LlamaConfig other = model.config();
  other.dim += 8;
  speculative::MtpHeads wrong = speculative::MtpHeads::random(1, 2, speculative::EagleHeadShape::like(other));
  CHECK_THROWS_WITH(speculative::mtp_generate(model, wrong, {1}, GenerationParams{}), Catch::Contains("has dim"));
  speculative::MtpOptions o;
  o.rule = speculative::AcceptanceRule::TypicalLossy;
  CHECK_THROWS_WITH(speculative::mtp_generate(model, heads, {1}, GenerationParams{}, o), Catch::Contains("lossy"));
  speculative::MtpHeads empty;
  CHECK_THROWS_WITH(speculative::mtp_generate(model, empty, {1}, GenerationParams{}), Catch::Contains("empty"));
}

TEST_CASE("tools/train_mtp.py writes modules that load and keep greedy MTP exact", "[.][opt-in]") {
  if (!fastinfer::testing::trainer_requested("MTP")) return;
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(golden_logits, "golden/tinystories-656k/logits_once_upon_a_time_pos0_pos5.txt");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  const std::string out = std::string(FASTINFER_BINARY_DIR) + "/mtp_trainer_test.mtp";
  std::filesystem::remove(out);
  const std::string cmd = fastinfer::testing::tool_command(
      "train_mtp.py", "--model " + model_path.string() + " --out " + out + " --check-logits " +
                          golden_logits.string() + " --sequences 48 --length 64 --epochs 1 --modules 3");
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  Model model = load(model_path.string());
  speculative::MtpHeads heads = fastinfer::examples::mtp_heads_from_flag(out, model.config());
  CHECK(heads.module_count() == 3);
  CHECK(heads.module(0).weight_dtype() == fastinfer::DType::F16);
  CHECK(check_golden(model, cases, out, wide_tree()) > 0);  // one small epoch: some drafts accepted
}
