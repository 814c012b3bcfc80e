// The correctness bar for Hugging Face checkpoints: greedy f32 decoding of
// models/tinystories-656k reproduces golden/tinystories-656k/cases token for
// token (from the prompt ids and from the text through our tokenizer), the
// decoded continuation equals continuation_text, and the logits at positions 0
// and 5 of "Once upon a time" match the PyTorch reference within 1e-4.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/model/hf_loader.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/tokenizer/hf_bpe_tokenizer.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"

namespace {

using Case = fastinfer::testing::GoldenCase;
using fastinfer::testing::read_golden_cases;

// pos -> 2048 logits, read from the C99 hex floats (exact f32 values).
std::map<int, std::vector<float>> read_logits(const std::filesystem::path& path) {
  std::map<int, std::vector<float>> out;
  std::ifstream in(path);
  int pos = -1;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind("pos=", 0) == 0) {
      pos = std::stoi(line.substr(4));
      continue;
    }
    std::istringstream words(line);
    std::string id, dec, hex;
    words >> id >> dec >> hex;
    out[pos].push_back(std::strtof(hex.c_str(), nullptr));
  }
  return out;
}

}  // namespace

TEST_CASE("tinystories-656k greedy generation reproduces every golden case", "[model][golden]") {
  FASTINFER_REQUIRE_SHARED(model_dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/tinystories-656k/cases");
  const auto cases = read_golden_cases(cases_dir);
  REQUIRE(cases.size() >= 4);
  // Which kernels produce the tokens (FASTINFER_CPU_LEVEL runs: tests/CMakeLists.txt).
  WARN("cpu: " << fastinfer::cpu::kernel_isa_summary());
  const auto tok = fastinfer::HfBpeTokenizer::from_directory(model_dir);

  for (int threads : {1, 2}) {
    fastinfer::ModelOptions options;
    options.threads = threads;
    fastinfer::LlamaModel<> model(fastinfer::load_hf_weights(model_dir), options);
    for (const auto& c : cases) {
      INFO("case " << c.name << ", " << threads << " thread(s)");
      // The text through our tokenizer gives the golden prompt.
      REQUIRE(tok.encode(c.text) == c.prompt);
      fastinfer::GenerationParams params;
      params.max_new_tokens = c.max_new_tokens;
      std::string streamed;
      std::int32_t prev = c.prompt.back();
      const auto r = fastinfer::generate(model, c.prompt, params, [&](std::int32_t id) {
        streamed += tok.decode_token(prev, id);
        prev = id;
      });
      CHECK(r.tokens == c.continuation);
      CHECK(fastinfer::stop_reason_name(r.stopped_by) == c.stopped_by);
      CHECK(tok.decode(r.tokens) == c.continuation_text);
      // Streamed after the prompt, no leading space is cut.
      CHECK(tok.decode(c.prompt) + streamed == tok.decode([&] {
              auto all = c.prompt;
              all.insert(all.end(), r.tokens.begin(), r.tokens.end());
              return all;
            }()));
    }
  }
}

TEST_CASE("tinystories-656k stops at the 512-position context", "[model][golden]") {
  FASTINFER_REQUIRE_SHARED(model_dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(case_path, "golden/tinystories-656k/cases/cat_mat.txt");
  const auto cases = read_golden_cases(case_path.parent_path());
  const Case* cat = nullptr;
  for (const auto& c : cases)
    if (c.name == "cat_mat") cat = &c;
  REQUIRE(cat != nullptr);
  REQUIRE(cat->stopped_by == "max_new_tokens");  // it rambles on without EOS
  fastinfer::LlamaModel<> model(fastinfer::load_hf_weights(model_dir));
  fastinfer::GenerationParams params;
  params.max_new_tokens = 1000;
  const auto r = fastinfer::generate(model, cat->prompt, params);
  // Either the story ended by EOS somewhere after the golden's 200 tokens, or
  // the sequence filled exactly 512 positions; the golden prefix holds either way.
  REQUIRE(r.tokens.size() >= cat->continuation.size());
  CHECK(std::vector<std::int32_t>(r.tokens.begin(), r.tokens.begin() + std::ptrdiff_t(cat->continuation.size())) ==
        cat->continuation);
  if (r.stopped_by == fastinfer::StopReason::SeqLen)
    CHECK(cat->prompt.size() + r.tokens.size() == 512);
  else
    CHECK(r.stopped_by == fastinfer::StopReason::Eos);
}

TEST_CASE("tinystories-656k logits at positions 0 and 5 match the reference within 1e-4", "[model][golden]") {
  FASTINFER_REQUIRE_SHARED(model_dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(logits_path, "golden/tinystories-656k/logits_once_upon_a_time_pos0_pos5.txt");
  const auto golden = read_logits(logits_path);
  REQUIRE(golden.at(0).size() == 2048);
  REQUIRE(golden.at(5).size() == 2048);
  const std::vector<std::int32_t> prompt = {1, 80, 147, 201, 282, 57};
  fastinfer::LlamaModel<> model(fastinfer::load_hf_weights(model_dir));

  auto max_diff = [](const float* a, const std::vector<float>& b) {
    double m = 0;
    for (std::size_t i = 0; i < b.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
    return m;
  };
  // Batched prefill: every position at once.
  std::vector<float> all(prompt.size() * 2048);
  model.reset();
  model.forward_prefill_all(prompt.data(), std::int64_t(prompt.size()), 0, all.data());
  CHECK(max_diff(all.data(), golden.at(0)) < 1e-4);
  CHECK(max_diff(all.data() + 5 * 2048, golden.at(5)) < 1e-4);
  CHECK(fastinfer::cpu::reference::argmax(all.data(), 2048) == 147);
  CHECK(fastinfer::cpu::reference::argmax(all.data() + 5 * 2048, 2048) == 313);
  // One token at a time: the decode path gives the same logits.
  model.reset();
  const float* logits = nullptr;
  for (int p = 0; p < 6; ++p) {
    logits = model.forward_decode(prompt[std::size_t(p)], p);
    if (p == 0) CHECK(max_diff(logits, golden.at(0)) < 1e-4);
  }
  CHECK(max_diff(logits, golden.at(5)) < 1e-4);
}

TEST_CASE("fastinfer-generate --model DIR --prompt TEXT tells the golden story", "[model][golden][cli]") {
  FASTINFER_REQUIRE_SHARED(model_dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(case_path, "golden/tinystories-656k/cases/once_upon_a_time.txt");
  const std::filesystem::path binary = std::filesystem::path(FASTINFER_BINARY_DIR) / "examples" / "fastinfer-generate";
  if (!std::filesystem::exists(binary)) {
    std::printf("FASTINFER_SKIP: %s not built\n", binary.c_str());
    WARN("FASTINFER_SKIP: fastinfer-generate not built");
    return;
  }
  Case golden;
  for (const auto& c : read_golden_cases(case_path.parent_path()))
    if (c.name == "once_upon_a_time") golden = c;
  REQUIRE(!golden.continuation.empty());
  const auto out = std::filesystem::temp_directory_path() / ("fastinfer_hf_cli_" + std::to_string(::getpid()));
  auto run = [&](const std::string& extra) {
    const std::string cmd = "'" + binary.string() + "' --model '" + model_dir.string() +
                            "' --prompt 'Once upon a time' --max-new-tokens " + std::to_string(golden.max_new_tokens) +
                            " " + extra + " >'" + out.string() + "' 2>/dev/null";
    const int status = std::system(cmd.c_str());
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    std::ifstream in(out);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  };
  std::ostringstream ids;
  for (std::size_t i = 0; i < golden.continuation.size(); ++i) ids << (i ? " " : "") << golden.continuation[i];
  CHECK(run("--print-ids") == ids.str() + "\n");
  CHECK(run("") == golden.text + golden.continuation_text + "\n");
  std::filesystem::remove(out);
}
