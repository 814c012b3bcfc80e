// The correctness bar: greedy decoding of stories260K.bin reproduces the
// llama2.c reference (golden/cases) token for token, and the logits at
// positions 0 and 10 match golden/logits_bos_pos0_pos10.txt.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/llama2c_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace {

using fastinfer::testing::GoldenCase;
using fastinfer::testing::read_golden_case;

// "pos=N hexfloat v0 v1 ..." lines -> position -> logits.
std::map<int, std::vector<float>> read_hex_logits(const std::filesystem::path& path) {
  std::map<int, std::vector<float>> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string pos_word, kind;
    words >> pos_word >> kind;
    if (kind != "hexfloat") continue;
    const int pos = std::stoi(pos_word.substr(pos_word.find('=') + 1));
    std::vector<float>& v = out[pos];
    for (std::string w; words >> w;) v.push_back(std::strtof(w.c_str(), nullptr));  // C99 hex floats
  }
  return out;
}

}  // namespace

TEST_CASE("stories260K greedy generation reproduces every golden case", "[model][golden]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/cases");
  std::vector<GoldenCase> cases;
  for (const auto& entry : std::filesystem::directory_iterator(cases_dir))
    if (entry.path().extension() == ".txt") cases.push_back(read_golden_case(entry.path()));
  REQUIRE(cases.size() >= 4);
  // Which kernels produce the tokens (FASTINFER_CPU_LEVEL runs: tests/CMakeLists.txt).
  WARN("cpu: " << fastinfer::cpu::kernel_isa_summary());

  for (int threads : {1, 2}) {
    fastinfer::LlamaModel<> model(fastinfer::load_llama2c(model_path.string()), {threads});
    for (const auto& gc : cases) {
      INFO("case " << gc.name << ", " << threads << " thread(s)");
      fastinfer::GenerationParams params;
      params.max_new_tokens = gc.max_new_tokens;
      const auto result = fastinfer::generate(model, gc.prompt, params);
      CHECK(result.tokens == gc.continuation);
      CHECK(std::string(fastinfer::stop_reason_name(result.stopped_by)) == gc.stopped_by);
    }
  }
}

TEST_CASE("stories260K logits at positions 0 and 10 match the golden hex floats", "[model][golden]") {
  FASTINFER_REQUIRE_SHARED(model_path, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(logits_path, "golden/logits_bos_pos0_pos10.txt");
  FASTINFER_REQUIRE_SHARED(bos_case, "golden/cases/bos_256.txt");
  const auto golden = read_hex_logits(logits_path);
  REQUIRE(golden.count(0) == 1);
  REQUIRE(golden.count(10) == 1);
  REQUIRE(golden.at(0).size() == 512);
  REQUIRE(golden.at(10).size() == 512);

  // Tokens at positions 0..10: BOS and the first ten greedy tokens.
  const GoldenCase gc = read_golden_case(bos_case);
  std::vector<std::int32_t> seq = gc.prompt;
  seq.insert(seq.end(), gc.continuation.begin(), gc.continuation.begin() + 10);
  REQUIRE(seq.size() == 11);
  REQUIRE(seq[10] == 456);  // the README's input token at position 10

  auto max_abs_diff = [](const float* a, const std::vector<float>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < b.size(); ++i) worst = std::max(worst, double(std::fabs(a[i] - b[i])));
    return worst;
  };
  for (int threads : {1, 2}) {
    INFO(threads << " thread(s)");
    fastinfer::LlamaModel<> model(fastinfer::load_llama2c(model_path.string()), {threads});
    // Token by token (decode path).
    CHECK(max_abs_diff(model.forward_decode(seq[0], 0), golden.at(0)) < 1e-4);
    const float* logits = nullptr;
    for (int pos = 1; pos <= 10; ++pos) logits = model.forward_decode(seq[std::size_t(pos)], pos);
    CHECK(max_abs_diff(logits, golden.at(10)) < 1e-4);
    // The whole prefix in one batched pass (prefill path).
    model.reset();
    CHECK(max_abs_diff(model.forward_prefill(seq, 0), golden.at(10)) < 1e-4);
  }
}
