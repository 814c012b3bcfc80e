// Staged forward passes (LlamaModel::begin_layers / run_layers / exit_logits
// / fill_kv) and confidence-gated early exit (model/confident_exit.hpp).
// References: a model built from the first L layers of the checkpoint (what
// an exit after L layers must compute), the golden continuations (a gate that
// never fires changes nothing), and an inflated model whose layers after the
// last real one add exactly zero (an exit there is exact, and the keys and
// values CALM propagates into the skipped layers equal the ones those layers
// compute: read back from the cache, bit for bit).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/model/confident_exit.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace {

using Model = fastinfer::LlamaModel<>;
using Tokens = std::vector<std::int32_t>;

Model load(const std::string& spec_text) { return Model(fastinfer::load_model(spec_text), fastinfer::ModelOptions{1, 32}); }

Model truncated(const std::string& spec_text, int layers) {
  fastinfer::LlamaWeights w = fastinfer::load_model(spec_text);
  w.layers.resize(std::size_t(layers));
  w.config.n_layers = layers;
  return Model(std::move(w), fastinfer::ModelOptions{1, 32});
}

std::vector<float> row(const float* p, int n) { return std::vector<float>(p, p + n); }

void check_golden(const std::filesystem::path& model_path, const std::filesystem::path& cases_dir) {
  Model model = load(model_path.string());
  const int layers = model.config().n_layers;
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  REQUIRE(!cases.empty());
  // Off, and on with a patience no token can reach (the checks run, nothing exits).
  for (int patience : {0, layers}) {
    fastinfer::ConfidentExit<Model> calm(model, {0.0f, patience, 1});
    for (const auto& c : cases) {
      INFO("patience " << patience << ", case " << c.name);
      fastinfer::GenerationParams p;
      p.max_new_tokens = c.max_new_tokens;
      const auto r = fastinfer::generate(calm, c.prompt, p);
      CHECK(r.tokens == c.continuation);
      CHECK(fastinfer::stop_reason_name(r.stopped_by) == c.stopped_by);
    }
    CHECK(calm.mean_layers() == Approx(layers));
  }
}

}  // namespace

TEST_CASE("a staged pass exiting after L layers computes the model made of the first L layers") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  const int layers = model.config().n_layers, vocab = model.config().vocab_size;
  const Tokens prompt = {1, 403, 407, 261, 378, 290};
  for (int l = 1; l <= layers; ++l) {
    INFO("exit after " << l << " layers");
    Model ref = truncated(model_path.string(), l);
    const auto want_prompt = row(ref.forward_prefill(prompt, 0), vocab);
    const auto want_next = row(ref.forward_decode(42, int(prompt.size())), vocab);
    model.reset();
    CHECK(row(model.forward_prefill_exit(prompt.data(), std::int64_t(prompt.size()), 0, l), vocab) == want_prompt);
    const std::int32_t t = 42;
    CHECK(row(model.forward_prefill_exit(&t, 1, int(prompt.size()), l), vocab) == want_next);
  }
  // At full depth the staged verbs are forward_prefill, bit for bit.
  Model plain = load(model_path.string());
  const auto want = row(plain.forward_prefill(prompt, 0), vocab);
  model.reset();
  model.begin_layers(prompt.data(), std::int64_t(prompt.size()), 0);
  model.run_layers(0, 2);
  model.run_layers(2, layers);
  CHECK(model.depth() == layers);
  CHECK(row(model.exit_logits(), vocab) == want);
}

TEST_CASE("staged passes reject layers out of order and calls without an open pass") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  Model model = load(model_path.string());
  const int layers = model.config().n_layers;
  CHECK_THROWS_AS(model.run_layers(0, 1), fastinfer::UsageError);
  CHECK_THROWS_AS(model.exit_logits(), fastinfer::UsageError);
  const Tokens prompt = {1, 403};
  model.begin_layers(prompt.data(), 2, 0);
  CHECK_THROWS_AS(model.run_layers(1, 2), fastinfer::InvalidArgument);       // skips layer 0
  CHECK_THROWS_AS(model.run_layers(0, layers + 1), fastinfer::InvalidArgument);
  model.run_layers(0, 1);
  CHECK_THROWS_AS(model.fill_kv(0, 2), fastinfer::InvalidArgument);          // layer 0 already ran
  model.fill_kv(1, layers);
  CHECK(model.depth() == layers);
  CHECK(model.cached_length() == 2);
  const std::int32_t bad = 1 << 20;
  CHECK_THROWS_AS(model.begin_layers(&bad, 1, 2), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(model.exit_logits(), fastinfer::UsageError);  // the rejected pass left none open
  CHECK(model.cached_length() == 2);
  model.reset();
  CHECK_THROWS_AS(model.run_layers(layers, layers), fastinfer::UsageError);
  CHECK_THROWS_AS(fastinfer::ConfidentExit<Model>(model, {1.5f, 0, 1}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::ConfidentExit<Model>(model, {0.5f, -1, 1}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::ConfidentExit<Model>(model, {0.5f, 0, layers + 1}), fastinfer::InvalidArgument);
  CHECK_THROWS_AS(fastinfer::ConfidentExit<Model>(model, {0.5f, 0, 0}), fastinfer::InvalidArgument);
}

TEST_CASE("confident exit that never fires reproduces the stories260K golden cases") {
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases, "golden/cases");
  check_golden(model, cases);
}

TEST_CASE("confident exit that never fires reproduces the tinystories-656k golden cases") {
  FASTINFER_REQUIRE_SHARED(model, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  check_golden(model, cases);
}

TEST_CASE("an exit after an inflated model's last real layer is exact, propagated KV included") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/tinystories-656k/cases");
  // Two real layers spread over six: real ones at 0 and 3, layers 4 and 5 add exactly zero.
  const std::string inflated = "inflate:" + model_path.string() + ":layers=6";
  Model plain = load(inflated), exiting = load(inflated);
  const auto& c = plain.config();
  REQUIRE(c.n_layers == 6);
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  REQUIRE(!cases.empty());
  for (const auto& gc : cases) {
    INFO("case " << gc.name);
    fastinfer::GenerationParams p;
    p.max_new_tokens = gc.max_new_tokens;
    fastinfer::ConfidentExit<Model> calm(exiting, {0.0f, 1, 4});  // patience 1: every token leaves at layer 4
    const auto r = fastinfer::generate(calm, gc.prompt, p);
    CHECK(r.tokens == gc.continuation);
    const std::int64_t decoded = calm.exits()[4];
    // Every fed token left at layer 4 (the last emitted one is fed only when another may follow).
    CHECK((decoded == std::int64_t(r.tokens.size()) || decoded == std::int64_t(r.tokens.size()) - 1));
    CHECK(calm.mean_layers() == Approx(4.0));
    // Every layer's keys and values at every position equal the plain model's.
    (void)fastinfer::generate(plain, gc.prompt, p);
    REQUIRE(plain.cached_length() == exiting.cached_length());
    const std::size_t kvd = std::size_t(c.kv_dim());
    std::vector<float> k1(kvd), v1(kvd), k2(kvd), v2(kvd);
    int differing = 0;
    for (int l = 0; l < c.n_layers; ++l)
      for (int pos = 0; pos < plain.cached_length(); ++pos) {
        plain.kv().read(l, Model::kSoloSequence, pos, k1.data(), v1.data());
        exiting.kv().read(l, Model::kSoloSequence, pos, k2.data(), v2.data());
        differing += (k1 != k2 || v1 != v2) ? 1 : 0;
      }
    CHECK(differing == 0);
  }
}

TEST_CASE("exits before the last real layer are lossy, compute the shallow model and are counted") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  const std::string inflated = "inflate:" + model_path.string() + ":layers=6";
  Model model = load(inflated);
  fastinfer::GenerationParams p;
  p.max_new_tokens = 60;
  const Tokens full = fastinfer::generate(model, {1}, p).tokens;
  // Leaving after layer 1 skips the second real layer (at 3): a different, still fluent-length text.
  fastinfer::ConfidentExit<Model> shallow(model, {0.0f, 1, 1});
  const Tokens early = fastinfer::generate(shallow, {1}, p).tokens;
  CHECK(early != full);
  CHECK(shallow.mean_layers() == Approx(1.0));
  // The same tokens teacher-forced through the exiting model: the exit pass's logits are the
  // one-layer model's.
  Model ref = truncated(inflated, 1);
  std::vector<float> a, b;
  const int vocab = model.config().vocab_size;
  model.reset();
  ref.reset();
  model.forward_prefill({1}, 0);
  ref.forward_prefill({1}, 0);
  for (int i = 0; i + 1 < int(early.size()) && i < 10; ++i) {
    a = row(shallow.forward_decode(early[std::size_t(i)], 1 + i), vocab);
    b = row(ref.forward_decode(early[std::size_t(i)], 1 + i), vocab);
    // Layer 0 attends over layer 0's KV only, which both models computed in full.
    CHECK(a == b);
  }
  // A threshold between: some tokens exit early, some run every layer.
  fastinfer::ConfidentExit<Model> gated(model, {0.9f, 0, 1});
  (void)fastinfer::generate(gated, {1}, p);
  std::int64_t total = 0;
  for (auto n : gated.exits()) total += n;
  CHECK(total > 0);
  CHECK(gated.mean_layers() < 6.0);
  CHECK(gated.exits()[6] < total);
}
