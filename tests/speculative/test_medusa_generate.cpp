// Medusa generation: greedy output equals plain greedy output (the golden
// cases of stories260K and tinystories-656k) for random heads of several
// seeds, both tree policies, and the trained heads committed in data/heads/
// (tools/train_medusa.py; FASTINFER_MEDUSA_HEADS / _TS name other files for
// stories260K / tinystories-656k); the verification
// forward with the tree mask gives a node the logits of a plain causal
// forward over its path; seeded sampling repeats exactly.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/medusa_flags.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace {

using fastinfer::GenerationParams;
using Model = fastinfer::LlamaModel<>;
namespace speculative = fastinfer::speculative;

using Case = fastinfer::testing::GoldenCase;

Model load(const std::string& path) { return Model(fastinfer::load_model(path), fastinfer::ModelOptions{1, 32}); }

speculative::TreePolicy policy(const std::string& name) {
  if (name == "choices") return speculative::FixedChoicesTree::default_for(4);
  if (name == "dynamic") return speculative::DynamicTree{};
  return speculative::DynamicTree{24, 4, 0};  // "dynamic-wide": beyond 16 rows
}

void check_golden(const std::filesystem::path& model_path, const std::filesystem::path& cases_dir,
                  const std::vector<std::string>& head_specs,
                  const std::vector<std::string>& tree_names = {"choices", "dynamic", "dynamic-wide"}) {
  Model model = load(model_path.string());
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  REQUIRE(!cases.empty());
  std::vector<std::pair<std::string, speculative::TreePolicy>> policies;
  for (const auto& n : tree_names) policies.emplace_back(n, policy(n));
  std::int64_t off_chain = 0;
  for (const std::string& hs : head_specs) {
    speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag(hs, model.config(), 4);
    for (const auto& [pname, policy] : policies)
      for (const Case& c : cases) {
        INFO("heads " << hs << ", tree " << pname << ", case " << c.name);
        GenerationParams p;
        p.max_new_tokens = c.max_new_tokens;
        speculative::MedusaOptions o;
        o.tree = policy;
        const auto r = speculative::medusa_generate(model, heads, c.prompt, p, o);
        CHECK(r.generation.tokens == c.continuation);
        CHECK(fastinfer::stop_reason_name(r.generation.stopped_by) == c.stopped_by);
        CHECK(r.stats.step_tokens + 1 == std::int64_t(r.generation.tokens.size()));
        CHECK(r.stats.accepted <= r.stats.drafted);
        off_chain += r.stats.accepted;
      }
  }
  CHECK(off_chain > 0);  // some drafts were accepted: the KV bookkeeping was exercised
}

}  // namespace

// One test case per (heads, tree) keeps each short (ASan included).
#define FASTINFER_MEDUSA_GOLDEN(HEADS, TREE)                                                           \
  TEST_CASE("greedy Medusa reproduces the stories260K golden cases, heads " HEADS ", tree " TREE) {   \
    FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");                                         \
    FASTINFER_REQUIRE_SHARED(cases, "golden/cases");                                                   \
    check_golden(model, cases, {HEADS}, {TREE});                                                       \
  }
FASTINFER_MEDUSA_GOLDEN("random:1", "choices")
FASTINFER_MEDUSA_GOLDEN("random:1", "dynamic")
FASTINFER_MEDUSA_GOLDEN("random:1", "dynamic-wide")
FASTINFER_MEDUSA_GOLDEN("random:2", "choices")
FASTINFER_MEDUSA_GOLDEN("random:2", "dynamic")

TEST_CASE("greedy Medusa reproduces the tinystories-656k golden cases (random heads, both trees)") {
  FASTINFER_REQUIRE_SHARED(model, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  check_golden(model, cases, {"random:1"});
}

TEST_CASE("greedy Medusa with trained heads reproduces the stories260K golden cases") {
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases, "golden/cases");
  FASTINFER_REQUIRE_HEADS(heads, "FASTINFER_MEDUSA_HEADS", "stories260K.medusa");
  check_golden(model, cases, {heads.string()});
}

TEST_CASE("greedy Medusa with trained heads reproduces the tinystories-656k golden cases") {
  FASTINFER_REQUIRE_SHARED(model, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  FASTINFER_REQUIRE_HEADS(heads, "FASTINFER_MEDUSA_HEADS_TS", "tinystories-656k.medusa");
  check_golden(model, cases, {heads.string()});
}

TEST_CASE("Medusa output equals plain generation at the sequence-length limit and with tiny budgets") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag("random:5", model.config(), 5);
  const std::vector<std::int32_t> near_end(505, 0);
  std::vector<std::int32_t> looped = {1};
  for (int i = 0; i < 30; ++i) looped.push_back(std::int32_t(100 + i % 5));
  for (const auto& pr : {near_end, looped})
    for (int budget : {0, 1, 2, 3, 7, 300}) {
      GenerationParams p;
      p.max_new_tokens = budget;
      const auto plain = fastinfer::generate(model, pr, p);
      for (const speculative::TreePolicy& t : {speculative::TreePolicy(speculative::FixedChoicesTree::default_for(5)),
                                        speculative::TreePolicy(speculative::DynamicTree{})}) {
        speculative::MedusaOptions o;
        o.tree = t;
        const auto r = speculative::medusa_generate(model, heads, pr, p, o);
        INFO("budget " << budget << " prompt length " << pr.size());
        CHECK(r.generation.tokens == plain.tokens);
        CHECK(r.generation.stopped_by == plain.stopped_by);
      }
    }
}

TEST_CASE("the tree-masked verification forward gives each node the logits of a causal forward over its path") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  Model model = load(model_path.string());
  const int vocab = model.config().vocab_size;
  const std::vector<std::int32_t> prompt = {1, 400, 50, 73, 900};
  speculative::HeadGuesses g;
  g.tokens = {{10, 11, 12}, {20, 21, 22}, {30, 31, 32}};
  g.probs = {{0.5f, 0.3f, 0.2f}, {0.6f, 0.3f, 0.1f}, {0.4f, 0.4f, 0.2f}};
  const speculative::CandidateTree ct = speculative::build_candidate_tree(speculative::select_paths(speculative::DynamicTree{9, 3, 0}, g), g, 3);
  REQUIRE(ct.tree.size() == 9);
  // Prompt minus its last two tokens cached; the last two pending (a recompute step).
  model.reset();
  model.forward_prefill(prompt.data(), 3, 0);
  fastinfer::ForwardBatch batch;
  speculative::build_tree_batch(batch, Model::kSoloSequence, prompt.data() + 3, 2, 3, ct.tree);
  const float* rows = model.forward(batch);
  const std::vector<float> got(rows, rows + std::size_t(batch.rows()) * std::size_t(vocab));
  for (int i = 0; i < ct.tree.size(); ++i) {
    std::vector<std::int32_t> path;
    for (int a = i; a >= 0; a = ct.tree.parent[std::size_t(a)]) path.insert(path.begin(), ct.tree.tokens[std::size_t(a)]);
    std::vector<std::int32_t> full = prompt;
    full.insert(full.end(), path.begin(), path.end());
    model.reset();
    const float* ref = model.forward_prefill(full, 0);
    const float* row = got.data() + std::size_t(2 + i) * std::size_t(vocab);
    float worst = 0;
    for (int t = 0; t < vocab; ++t) worst = std::max(worst, std::abs(row[t] - ref[t]));
    INFO("node " << i);
    CHECK(worst < 1e-4f);
  }
}

TEST_CASE("seeded Medusa sampling repeats exactly and differs across seeds, and typical acceptance runs") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag("random:3", model.config(), 4);
  GenerationParams p;
  p.max_new_tokens = 100;
  p.temperature = 0.9f;
  p.top_k = 40;
  for (auto rule : {speculative::AcceptanceRule::Exact, speculative::AcceptanceRule::TypicalLossy}) {
    speculative::MedusaOptions o;
    o.rule = rule;
    auto run = [&](std::uint64_t seed) {
      p.seed = seed;
      return speculative::medusa_generate(model, heads, {1}, p, o);
    };
    const auto a = run(7), b = run(7), c = run(8);
    CHECK(a.generation.tokens == b.generation.tokens);
    CHECK(a.stats.accepted == b.stats.accepted);
    CHECK(a.generation.tokens != c.generation.tokens);
    CHECK(a.generation.tokens.size() > 10);
  }
}

TEST_CASE("Medusa under the coupled rule emits plain sampling's tokens with the same seed") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  GenerationParams p;
  p.max_new_tokens = 120;
  p.temperature = 0.8f;
  std::int64_t drafted = 0;
  for (const std::string tree : {"choices", "dynamic"})
    for (std::uint64_t seed : {1, 2, 5}) {
      p.seed = seed;
      p.top_k = seed == 2 ? 40 : 0;
      p.top_p = seed == 5 ? 0.9f : 1.0f;
      const auto plain = fastinfer::generate(model, {1}, p);
      speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag("random:" + std::to_string(seed), model.config(), 4);
      speculative::MedusaOptions o = fastinfer::examples::medusa_options_from_flag(tree, heads.num_heads());
      o.rule = speculative::AcceptanceRule::Coupled;
      const auto r = speculative::medusa_generate(model, heads, {1}, p, o);
      INFO("tree " << tree << ", seed " << seed);
      CHECK(r.generation.tokens == plain.tokens);
      CHECK(r.generation.stopped_by == plain.stopped_by);
      drafted += r.stats.drafted;
    }
  CHECK(drafted > 0);
}

// Dynamic speculation picks each step's tree depth (0: a plain step) from
// wall-clock timings, so the depths differ run to run; the output must not.
// The "restless" controller (every plain step may probe, every other
// drafting step is plain) makes both kinds of step and the switches happen.
TEST_CASE("Medusa with dynamic tree depth reproduces the golden cases and under the coupled rule plain sampling") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/cases");
  Model model = load(model_path.string());
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag("random:1", model.config(), 4);
  speculative::AdaptiveDraftConfig restless;
  restless.probe_budget = 1.0;
  restless.refresh_every = 2;
  std::int64_t plain_steps = 0, drafting_steps = 0;
  for (bool is_restless : {false, true})
    for (const std::string tree : {"choices", "dynamic"}) {
      speculative::AdaptiveDraftLength ctl(4, is_restless ? restless : speculative::AdaptiveDraftConfig{});
      speculative::MedusaOptions o = fastinfer::examples::medusa_options_from_flag(tree, heads.num_heads());
      o.adaptive = &ctl;
      for (const Case& c : cases) {
        INFO("tree " << tree << ", restless " << is_restless << ", case " << c.name);
        GenerationParams p;
        p.max_new_tokens = c.max_new_tokens;
        const auto r = speculative::medusa_generate(model, heads, c.prompt, p, o);
        CHECK(r.generation.tokens == c.continuation);
        CHECK(r.stats.k_sum <= 4 * r.stats.target_forwards);
        plain_steps += r.stats.plain_steps;
        drafting_steps += r.stats.target_forwards - r.stats.plain_steps;
      }
      GenerationParams p;
      p.max_new_tokens = 100;
      p.temperature = 0.8f;
      p.seed = 3;
      o.rule = speculative::AcceptanceRule::Coupled;
      CHECK(speculative::medusa_generate(model, heads, {1}, p, o).generation.tokens ==
            fastinfer::generate(model, {1}, p).tokens);
    }
  CHECK(plain_steps > 0);
  CHECK(drafting_steps > 0);
}

TEST_CASE("medusa_generate rejects bad arguments") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  speculative::MedusaHeads wrong = speculative::MedusaHeads::random(1, 2, model.config().dim + 1, model.config().vocab_size);
  CHECK_THROWS_AS(speculative::medusa_generate(model, wrong, {1}, GenerationParams{}), fastinfer::InvalidArgument);
  speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag("random:1", model.config());
  CHECK_THROWS_AS(speculative::medusa_generate(model, heads, {}, GenerationParams{}), fastinfer::InvalidArgument);
  speculative::MedusaOptions o;
  o.tree = speculative::DynamicTree{-1, 3, 0};
  CHECK_THROWS_AS(speculative::medusa_generate(model, heads, {1}, GenerationParams{}, o), fastinfer::InvalidArgument);
}
