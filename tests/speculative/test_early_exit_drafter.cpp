// Self-speculative early exit: the target drafts with its first layers and
// verifies with all of them, sharing one KV cache. Greedy output equals the
// golden continuations of stories260K and tinystories-656k at the first,
// middle and last exit layers and k in {1, 4}; coupled sampling emits generate()'s tokens; the
// drafts equal an independent reference (a model built from the target's
// first L layers and its norm and classifier); the shared cache never feeds
// the verifier a draft-only position (a drafter that corrupts it would change
// the output, so the golden checks see that too).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/drafter_factory.hpp"
#include "fastinfer/speculative/early_exit_drafter.hpp"
#include "fastinfer/speculative/speculative_generate.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace {

using Model = fastinfer::LlamaModel<>;
namespace speculative = fastinfer::speculative;
using Tokens = std::vector<std::int32_t>;

Model load(const std::string& spec_text, int max_batch = 32) {
  return Model(fastinfer::load_model(spec_text), fastinfer::ModelOptions{1, max_batch});
}

// The target's first `layers` layers with its final norm and classifier, as
// a model of its own: what an early-exit draft must compute.
Model truncated(const std::string& spec_text, int layers) {
  fastinfer::LlamaWeights w = fastinfer::load_model(spec_text);
  w.layers.resize(std::size_t(layers));
  w.config.n_layers = layers;
  return Model(std::move(w), fastinfer::ModelOptions{1, 32});
}

void check_golden(const std::filesystem::path& model_path, const std::filesystem::path& cases_dir) {
  Model target = load(model_path.string());
  speculative::ModelTarget<Model> adapter(target);
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  REQUIRE(!cases.empty());
  const int layers = target.config().n_layers;
  std::int64_t drafted = 0, accepted = 0;
  // The first, middle and last exit layers (every layer's drafts are checked against an
  // independent model below); k 1 and 4. Kept small: this runs under ASan in CI.
  for (int exit : {1, (layers + 1) / 2, layers}) {
    if (exit == (layers + 1) / 2 && (exit == 1 || exit == layers)) continue;  // 1- and 2-layer models
    for (int k : {1, 4}) {
      speculative::EarlyExitDrafter<Model> drafter(target, exit, {});
      for (const auto& c : cases) {
        INFO("exit layer " << exit << " of " << layers << ", k " << k << ", case " << c.name);
        fastinfer::GenerationParams p;
        p.max_new_tokens = c.max_new_tokens;
        const auto r = speculative::speculative_generate(adapter, drafter, c.prompt, p, speculative::SpeculativeOptions{k});
        CHECK(r.generation.tokens == c.continuation);
        CHECK(fastinfer::stop_reason_name(r.generation.stopped_by) == c.stopped_by);
        CHECK(r.stats.step_tokens + 1 == std::int64_t(r.generation.tokens.size()));
        drafted += r.stats.drafted, accepted += r.stats.accepted;
        if (exit == layers) {
          // The draft is the target: every draft is kept, except those at and after a stop
          // token (BOS / EOS ends the request inside an accepted run: not emitted, not counted).
          if (c.stopped_by == "eos" || c.stopped_by == "bos") CHECK(r.stats.drafted - r.stats.accepted <= k);
          else CHECK(r.stats.accepted == r.stats.drafted);
        }
      }
    }
  }
  // Both accepted and rejected drafts happened: rollback over the shared cache was exercised.
  CHECK(accepted > 0);
  CHECK(accepted < drafted);
}

}  // namespace

TEST_CASE("early-exit self-speculation reproduces the stories260K golden cases at the first, middle and last exit layer") {
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases, "golden/cases");
  check_golden(model, cases);
}

TEST_CASE("early-exit self-speculation reproduces the tinystories-656k golden cases at every exit layer (two)") {
  FASTINFER_REQUIRE_SHARED(model, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  check_golden(model, cases);
}

TEST_CASE("early-exit drafts are the argmax chain of the target's first layers, norm and classifier") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  const std::string path = model_path.string();
  Model target = load(path);
  const int layers = target.config().n_layers;
  const Tokens prompt = {1, 403, 407, 261, 378};
  for (int exit = 1; exit <= layers; ++exit) {
    INFO("exit layer " << exit);
    Model ref = truncated(path, exit);
    const Tokens expected = fastinfer::generate(ref, prompt, fastinfer::GenerationParams{5}).tokens;
    REQUIRE(expected.size() == 5);
    // The target first holds the prompt at full depth, as after speculative_generate's prefill.
    target.reset();
    target.forward_prefill(prompt, 0);
    speculative::EarlyExitDrafter<Model> drafter(target, exit, {});
    drafter.begin(prompt);
    Tokens ctx = prompt;
    ctx.push_back(expected[0]);
    speculative::DraftProposal out;
    drafter.propose(ctx, 4, 1, out);
    CHECK(out.tokens == Tokens(expected.begin() + 1, expected.end()));
    CHECK(out.probs.empty());
    CHECK(drafter.draft_tokens() == 4);  // the pending token and three drafts: the prompt's KV was reused
    // The prompt's KV at every layer is still the target's: a full forward of the next token agrees with a fresh one.
    const float* got = target.forward_decode(expected[0], int(prompt.size()));
    const std::vector<float> a(got, got + target.config().vocab_size);
    Model fresh = load(path);
    fresh.forward_prefill(prompt, 0);
    const float* want = fresh.forward_decode(expected[0], int(prompt.size()));
    CHECK(a == std::vector<float>(want, want + fresh.config().vocab_size));
  }
}

TEST_CASE("early-exit self-speculation under the coupled rule emits generate()'s sampled tokens") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model target = load(model_path.string());
  speculative::ModelTarget<Model> adapter(target);
  fastinfer::GenerationParams p;
  p.temperature = 0.8f;
  p.max_new_tokens = 120;
  std::int64_t drafted = 0, accepted = 0;
  for (std::uint64_t seed : {1, 2, 3}) {
    p.seed = seed;
    p.top_k = seed == 2 ? 40 : 0;
    const Tokens plain = fastinfer::generate(target, {1}, p).tokens;
    for (auto rule : {speculative::AcceptanceRule::Coupled, speculative::AcceptanceRule::Exact}) {
      speculative::EarlyExitDrafter<Model> drafter(target, 3, fastinfer::sampling_params(p), rule);
      speculative::SpeculativeOptions o{4};
      o.rule = speculative::AcceptanceRule::Coupled;
      const auto r = speculative::speculative_generate(adapter, drafter, {1}, p, o);
      INFO("seed " << seed << ", draws " << speculative::acceptance_rule_name(rule));
      CHECK(r.generation.tokens == plain);
      if (rule == speculative::AcceptanceRule::Coupled) drafted += r.stats.drafted, accepted += r.stats.accepted;
    }
    // Exact rejection sampling with q handed over runs and repeats with a seed.
    speculative::EarlyExitDrafter<Model> exact(target, 3, fastinfer::sampling_params(p));
    const auto a = speculative::speculative_generate(adapter, exact, {1}, p, speculative::SpeculativeOptions{4});
    const auto b = speculative::speculative_generate(adapter, exact, {1}, p, speculative::SpeculativeOptions{4});
    CHECK(a.generation.tokens == b.generation.tokens);
    CHECK(a.stats.drafted > 0);
  }
  CHECK(accepted > 0);
  CHECK(accepted < drafted);
}

TEST_CASE("early-exit drafter: exit layer defaults to half, bad layers are rejected, make_drafter builds it") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model target = load(model_path.string());
  const int layers = target.config().n_layers;
  CHECK(speculative::EarlyExitDrafter<Model>(target, 0, {}).exit_layer() == (layers + 1) / 2);
  CHECK_THROWS_AS(speculative::EarlyExitDrafter<Model>(target, layers + 1, {}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(speculative::EarlyExitDrafter<Model>(target, -1, {}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(target.forward_prefill_exit(Tokens{1}.data(), 1, 0, 0), fastinfer::InvalidArgument);
  speculative::DrafterSpec s;
  s.kind = "early-exit";
  s.exit_layer = 2;
  CHECK_THROWS_AS(speculative::make_drafter(s, model_path.string(), target.config(), {}, 1), fastinfer::InvalidArgument);
  auto d = speculative::make_drafter(s, model_path.string(), target.config(), {}, 1, &target);
  auto* ee = dynamic_cast<speculative::EarlyExitDrafter<Model>*>(d.get());
  REQUIRE(ee != nullptr);
  CHECK(ee->exit_layer() == 2);
  speculative::DraftProposal out;
  CHECK_THROWS_AS(ee->propose({1, 100000}, 2, 0, out), fastinfer::InvalidArgument);
}
