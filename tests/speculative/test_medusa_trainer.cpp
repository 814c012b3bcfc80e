// Opt-in (FASTINFER_RUN_TRAINER=1; needs python3-torch and python3-numpy):
// runs tools/train_medusa.py on stories260K and on the Hugging Face
// directory of tinystories-656k with a small budget, then checks that the
// heads file and tree file it wrote load, have the model's shape, reproduce
// the golden cases exactly under greedy Medusa and get drafts accepted. CI does
// not set the variable (it must never need torch): the case prints
// FASTINFER_SKIP and CTest reports it as skipped.
//   FASTINFER_RUN_TRAINER=1 [FASTINFER_PYTHON=/usr/bin/python3] ctest -R medusa_trainer
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/medusa_flags.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/speculative/medusa_heads.hpp"
#include "fastinfer/speculative/medusa_tree.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"
#include "trainer_run.hpp"

TEST_CASE("tools/train_medusa.py writes heads that load and keep greedy Medusa exact") {
  if (!fastinfer::testing::trainer_requested("Medusa")) return;
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(golden_logits, "golden/logits_bos_pos0_pos10.txt");
  FASTINFER_REQUIRE_SHARED(bos_case, "golden/cases/bos_256.txt");
  const std::string out = std::string(FASTINFER_BINARY_DIR) + "/medusa_trainer_test.medusa";
  std::filesystem::remove(out);
  const std::string cmd = fastinfer::testing::tool_command(
      "train_medusa.py", "--model " + model_path.string() + " --out " + out + " --check-logits " +
                             golden_logits.string() + " --sequences 64 --length 96 --epochs 1 --batch 1024");
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  REQUIRE(std::filesystem::exists(out));

  fastinfer::LlamaModel<> model(fastinfer::load_model(model_path.string()), fastinfer::ModelOptions{1, 32});
  fastinfer::speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag(out, model.config());
  CHECK(heads.num_heads() == 4);
  CHECK_FALSE(heads.shared_classifier());
  // bos_256: greedy from BOS, 256 tokens.
  fastinfer::GenerationParams p;
  p.max_new_tokens = 256;
  const auto plain = fastinfer::generate(model, {1}, p);
  for (const std::string& tree : {std::string("choices"), std::string("dynamic"), "choices:" + out + ".choices"}) {
    const auto r = fastinfer::speculative::medusa_generate(model, heads, {1}, p,
                                                    fastinfer::examples::medusa_options_from_flag(tree, heads.num_heads()));
    CHECK(r.generation.tokens == plain.tokens);
    CHECK(r.stats.mean_accepted_per_step() > 1.2);
  }
}

TEST_CASE("tools/train_medusa.py trains heads for a Hugging Face directory (tinystories-656k)") {
  if (!fastinfer::testing::trainer_requested("Medusa")) return;
  FASTINFER_REQUIRE_SHARED(model_path, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(golden_logits, "golden/tinystories-656k/logits_once_upon_a_time_pos0_pos5.txt");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/tinystories-656k/cases");
  const std::string out = std::string(FASTINFER_BINARY_DIR) + "/medusa_trainer_test_hf.medusa";
  std::filesystem::remove(out);
  const std::string cmd = fastinfer::testing::tool_command(
      "train_medusa.py", "--model " + model_path.string() + " --out " + out + " --check-logits " +
                             golden_logits.string() + " --sequences 48 --length 96 --epochs 1 --batch 1024");
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
  fastinfer::LlamaModel<> model(fastinfer::load_model(model_path.string()), fastinfer::ModelOptions{1, 32});
  fastinfer::speculative::MedusaHeads heads = fastinfer::examples::medusa_heads_from_flag(out, model.config());
  CHECK(heads.dim() == 128);
  CHECK(heads.vocab() == 2048);
  for (const auto& c : fastinfer::testing::read_golden_cases(cases_dir)) {
    fastinfer::GenerationParams p;
    p.max_new_tokens = c.max_new_tokens;
    const auto r = fastinfer::speculative::medusa_generate(
        model, heads, c.prompt, p, fastinfer::examples::medusa_options_from_flag("choices:" + out + ".choices", heads.num_heads()));
    INFO("case " << c.name);
    CHECK(r.generation.tokens == c.continuation);
  }
}
