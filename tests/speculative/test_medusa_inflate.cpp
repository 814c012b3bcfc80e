// Heads trained on a model work on its inflated stand-in (issue 10) once
// zero-padded (MedusaHeads::padded_to, "pad:FILE"): the inflated model's
// hidden state after the final RMSNorm is the original's plus zeros, so the
// padded heads draft the same tokens with the same probabilities, and Medusa
// generation takes the same steps (same trees, same acceptances) and emits
// the golden tokens. Checked on tinystories-656k inflated to hidden 256,
// 16/8 heads and 4 layers (two identity layers): small enough for ASan.
// Heads with their own classifiers, so that the classifier padding is
// exercised too; and the trained heads committed as
// data/heads/tinystories-656k.medusa (FASTINFER_MEDUSA_HEADS_TS names another).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "common/medusa_flags.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace {

using Model = fastinfer::LlamaModel<>;
namespace speculative = fastinfer::speculative;

void check_padded_heads_draft_alike(const std::filesystem::path& model_path, const std::filesystem::path& cases_dir,
                                    const std::string& heads_file) {
  Model original(fastinfer::load_model(model_path.string()), fastinfer::ModelOptions{1, 32});
  Model inflated(fastinfer::load_model("inflate:" + model_path.string() + ":dim=256,layers=4,heads=16,kv_heads=8"),
                 fastinfer::ModelOptions{1, 32});
  REQUIRE(inflated.config().dim == 256);
  speculative::MedusaHeads small = fastinfer::examples::medusa_heads_from_flag(heads_file, original.config());
  speculative::MedusaHeads wide = fastinfer::examples::medusa_heads_from_flag("pad:" + heads_file, inflated.config());
  REQUIRE(wide.dim() == 256);
  const int dim0 = original.config().dim, dim1 = inflated.config().dim;
  const auto cases = fastinfer::testing::read_golden_cases(cases_dir);
  REQUIRE(!cases.empty());

  // Drafts from the hidden state of every position of a golden sequence.
  const fastinfer::testing::GoldenCase& gc = cases.front();
  std::vector<std::int32_t> seq = gc.prompt;
  seq.insert(seq.end(), gc.continuation.begin(), gc.continuation.begin() + std::min<long>(40, long(gc.continuation.size())));
  speculative::HeadGuesses g0, g1;
  std::vector<float> s0, s1;
  std::vector<float> h0(static_cast<std::size_t>(dim0)), h1(static_cast<std::size_t>(dim1));
  original.reset();
  inflated.reset();
  int differing_tokens = 0;
  float worst_prob = 0, pad_abs = 0;
  for (std::size_t t = 0; t < seq.size(); ++t) {
    original.forward_prefill(seq.data() + t, 1, std::int64_t(t));
    inflated.forward_prefill(seq.data() + t, 1, std::int64_t(t));
    std::copy(original.last_hidden(), original.last_hidden() + dim0, h0.begin());
    std::copy(inflated.last_hidden(), inflated.last_hidden() + dim1, h1.begin());
    for (int i = dim0; i < dim1; ++i) pad_abs = std::max(pad_abs, std::abs(h1[std::size_t(i)]));
    speculative::medusa_guesses(original.backend(), small, h0.data(), original.weights().classifier, 4, small.num_heads(), g0, s0);
    speculative::medusa_guesses(inflated.backend(), wide, h1.data(), inflated.weights().classifier, 4, wide.num_heads(), g1, s1);
    for (int k = 0; k < small.num_heads(); ++k)
      for (int r = 0; r < 4; ++r) {
        differing_tokens += g0.tokens[std::size_t(k)][std::size_t(r)] != g1.tokens[std::size_t(k)][std::size_t(r)];
        worst_prob = std::max(worst_prob, std::abs(g0.probs[std::size_t(k)][std::size_t(r)] -
                                                   g1.probs[std::size_t(k)][std::size_t(r)]));
      }
  }
  CHECK(pad_abs == 0.0f);  // the inflated model's extra hidden coordinates are exactly zero
  CHECK(differing_tokens == 0);
  CHECK(worst_prob < 1e-4f);

  // Whole generations: same tokens (the golden ones), same steps and acceptances.
  for (const auto& c : cases) {
    for (const std::string tree : {"choices", "dynamic"}) {
      INFO("case " << c.name << ", tree " << tree);
      fastinfer::GenerationParams p;
      p.max_new_tokens = std::min(c.max_new_tokens, 64);
      const auto o = fastinfer::examples::medusa_options_from_flag(tree, small.num_heads());
      const auto a = speculative::medusa_generate(original, small, c.prompt, p, o);
      const auto b = speculative::medusa_generate(inflated, wide, c.prompt, p, o);
      CHECK(a.generation.tokens ==
            std::vector<std::int32_t>(c.continuation.begin(),
                                      c.continuation.begin() + std::min<long>(long(c.continuation.size()),
                                                                              long(a.generation.tokens.size()))));
      CHECK(b.generation.tokens == a.generation.tokens);
      CHECK(b.stats.target_forwards == a.stats.target_forwards);
      CHECK(b.stats.drafted == a.stats.drafted);
      CHECK(b.stats.accepted == a.stats.accepted);
    }
  }
}

}  // namespace

TEST_CASE("zero-padded random heads draft the same tokens on inflated tinystories-656k as on the original") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  const std::string file =
      (std::filesystem::temp_directory_path() / ("fastinfer_medusa_pad_" + std::to_string(::getpid()) + ".medusa"))
          .string();
  // Own classifiers (not shared): their padding is exercised too.
  speculative::MedusaHeads::random(11, 4, 128, 2048, /*shared_classifier=*/false, 2.0f).save(file);
  check_padded_heads_draft_alike(model_path, cases, file);
  std::filesystem::remove(file);
}

TEST_CASE("zero-padded trained heads draft alike on inflated tinystories-656k") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases, "golden/tinystories-656k/cases");
  FASTINFER_REQUIRE_HEADS(heads, "FASTINFER_MEDUSA_HEADS_TS", "tinystories-656k.medusa");
  check_padded_heads_draft_alike(model_path, cases, heads.string());
}
