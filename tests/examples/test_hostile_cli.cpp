// Hostile use of the example programs (issue 18): every program-level
// reproducer as a regression test. The bar for each bad case: one
// "<program>: error:" line on stderr, exit 2 for a usage error or 1 for a bad
// file / runtime failure, never a signal, a hang (killed after a timeout) or
// exit 0, and (Release build, GNU time installed) peak RSS under 200 MB.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "file_bytes.hpp"
#include "golden.hpp"
#include "program_run.hpp"
#include "shared_dir.hpp"

namespace fs = std::filesystem;
using fastinfer::testing::count_lines;
using fastinfer::testing::ProgramRun;
using fastinfer::testing::run_program;
using fastinfer::testing::ScratchDir;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;  // shadow memory: RSS says nothing here
#else
constexpr bool kSanitized = false;
#endif

constexpr long kMaxRssKb = 200 * 1024;

// The bar for a hostile case.
void check_refused(const ProgramRun& r, const std::string& program, int code, const std::string& mention) {
  INFO("stderr: " << r.err << "stdout: " << r.out.substr(0, 300));
  CHECK(r.exited);
  CHECK(r.code == code);
  CHECK(count_lines(r.err) == 1);
  CHECK(r.err.rfind(program + ": error: ", 0) == 0);
  CHECK(r.err.find(mention) != std::string::npos);
  if (!kSanitized && r.peak_rss_kb >= 0) CHECK(r.peak_rss_kb < kMaxRssKb);
}

using fastinfer::testing::read_bytes;
using fastinfer::testing::write_bytes;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

}  // namespace

TEST_CASE("fastinfer-serve-bench: hostile flags are one-line usage errors, never a signal or a hang",
          "[examples][cli][hostile]") {
  FASTINFER_REQUIRE_PROGRAM(bench, "fastinfer-serve-bench");
  // Each case fails before a model is loaded (or on loading it).
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--block-size 0", "--block-size"},             // was SIGFPE
      {"--block-size 3", "not a power of two"},
      {"--block-size 1048576", "--block-size"},
      {"--prompt-len 2147483647 --output-len 2147483647", "length range"},  // was an int overflow, SIGABRT
      {"--prompt-len 4294967297", "length range"},
      {"--requests 1000000 --prompt-len 256", "exceeds the limit"},        // was 3.9 GB, SIGABRT
      {"--rate 1e-9", "--rate"},                                           // was a hang
      {"--no-such-flag", "no-such-flag"},                                  // was exit 109
      {"--requests abc", "--requests"},                                    // was exit 105
      {"--seed -1", "--seed"},
      {"--seed 18446744073709551616", "--seed"},
      {"--swap-blocks 8", "--swap-blocks is not used"},
      {"--draft-weights f16", "--draft-weights is not used"},
      {"--ctx-size 99999999", "--ctx-size"},
  };
  for (const auto& [args, mention] : cases) {
    INFO("args: " << args);
    check_refused(run_program(bench, "--no-static " + args, 60), "fastinfer-serve-bench", 2, mention);
  }
  check_refused(run_program(bench, "--model /nonexistent/model.bin"), "fastinfer-serve-bench", 1, "nonexistent");
  const ProgramRun ok = run_program(bench, "--model synthetic:tiny --requests 2 --prompt-len 4 --output-len 4 --no-static");
  INFO(ok.err);
  CHECK(ok.code == 0);
  CHECK(ok.out.find("throughput") != std::string::npos);
  CHECK(ok.err.find("KV self size") != std::string::npos);
}

TEST_CASE("fastinfer-generate: flags a mode ignores, wrapped seeds and absurd sizes are usage errors",
          "[examples][cli][hostile]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--seed -1", "--seed"},
      {"--seed 18446744073709551616", "--seed"},
      {"--window 8", "--window is not used with --kv-layout contiguous"},
      {"--block-size 16", "--block-size is not used with --kv-layout contiguous"},
      {"--kv-layout paged --sinks 4", "--sinks is not used"},
      {"--lookahead 5,4,5", "--lookahead is not used without --spec lookahead"},
      {"--medusa-tree dynamic", "--medusa-tree is not used without --spec medusa"},
      {"--spec lookahead --lookahead 1000000,1000000,1000000", "exceeds the limits"},  // was bad_alloc
      {"--kv-layout paged --block-size 1048576", "--block-size"},                     // was 2.1 GB
      {"--prompt-ids 1,2 --prompt-ids 1,3 --spec medusa --medusa-heads /nonexistent", "--spec is not used"},
      {"--prompt-ids 1,2 --prompt-ids 1,3 --kv int8", "--kv is not used"},
      {"--ctx-size 99999999", "--ctx-size"},
      {"--parse-special", "--parse-special"},
  };
  for (const auto& [args, mention] : cases) {
    INFO("args: " << args);
    check_refused(run_program(gen, args + " --max-new-tokens 2", 60), "fastinfer-generate", 2, mention);
  }
  // A missing file named by a flag is a bad input file (1), whichever flag.
  check_refused(run_program(gen, "--spec medusa --medusa-heads /nonexistent/heads.bin"), "fastinfer-generate", 1,
                "nonexistent");
  check_refused(run_program(gen, "--spec medusa --medusa-tree choices:/nonexistent/tree.choices"),
                "fastinfer-generate", 1, "nonexistent");
}

TEST_CASE("fastinfer-generate: several prompts with --weights q8_0 run (the multi-prompt path knew three types)",
          "[examples][cli][hostile]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  // synthetic:15M: q8_0 needs rows that are multiples of 32 (tiny's 172 are not).
  const std::string q8 = "--model synthetic:15M --weights q8_0 --max-new-tokens 4 ";
  const ProgramRun multi = run_program(gen, q8 + "--prompt-ids 1,5,9 --prompt-ids 1,5,7");
  INFO(multi.err);
  REQUIRE(multi.code == 0);
  // Each prompt's tokens equal a single-prompt greedy run of the same q8_0 model.
  for (const char* prompt : {"1,5,9", "1,5,7"}) {
    const ProgramRun solo =
        run_program(gen, q8 + "--print-ids --prompt-ids " + prompt);
    REQUIRE(solo.code == 0);
    CHECK(multi.out.find("generated: " + solo.out.substr(0, solo.out.size() - 1) + "\n") != std::string::npos);
  }
}

TEST_CASE("fastinfer-generate: NaN weights end greedy and sampled runs with exit 1, not zeros and exit 0",
          "[examples][cli][hostile]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  ScratchDir dir;
  // llama2.c layout: 7 int32 of header, then the embedding [512][64]: a NaN
  // row for BOS (id 1) puts NaN in the residual stream, so every logit.
  std::string bytes = read_bytes(model);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int i = 0; i < 64; ++i) std::memcpy(&bytes[28 + 64 * 4 + 4 * std::size_t(i)], &nan, 4);
  write_bytes(dir.dir / "nan.bin", bytes);
  for (const char* mode : {"", "--temperature 0.8", "--spec prompt-lookup"}) {
    INFO("mode: " << mode);
    check_refused(run_program(gen, "--model " + q(dir.dir / "nan.bin") + " --prompt-ids 1,400 " + mode),
                  "fastinfer-generate", 1, "logits contain NaN");
  }
}

TEST_CASE("fastinfer-generate: hostile model files end in exit 1 with one line and little memory",
          "[examples][cli][hostile]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  FASTINFER_REQUIRE_SHARED(gguf, "models/stories260K.gguf");
  FASTINFER_REQUIRE_SHARED(hf, "models/tinystories-656k");
  ScratchDir dir;
  const std::string original = read_bytes(gguf);
  auto patched = [&](const char* name, const std::string& key, auto value) {
    std::string b = original;
    fastinfer::testing::put_at(b, fastinfer::testing::gguf_value_offset(b, key), value);
    write_bytes(dir.dir / name, b);
    return dir.dir / name;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  check_refused(run_program(gen, "--model " + q(patched("eps.gguf", "llama.attention.layer_norm_rms_epsilon", nan))),
                "fastinfer-generate", 1, "norm_eps");
  check_refused(run_program(gen, "--model " + q(patched("ctx.gguf", "llama.context_length", 2147483647u))),
                "fastinfer-generate", 1, "max_seq_len 2147483647");
  check_refused(run_program(gen, "--model " + q(patched("bos.gguf", "tokenizer.ggml.bos_token_id", 9999u))),
                "fastinfer-generate", 1, "bos_id 9999");
  // A context of 10^6: legal, and the run sizes its KV cache from what it asks.
  const ProgramRun big = run_program(gen, "--model " + q(patched("big.gguf", "llama.context_length", 1000000u)) +
                                              " --prompt-ids 1,400 --max-new-tokens 8 --print-ids");
  INFO(big.err);
  CHECK(big.code == 0);
  if (!kSanitized && big.peak_rss_kb >= 0) CHECK(big.peak_rss_kb < kMaxRssKb);

  // Hugging Face: num_hidden_layers 10^7 used to allocate 2.35 GB of layers.
  const fs::path model = dir.dir / "hf";
  fs::create_directories(model);
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    fs::create_symlink(fs::absolute(hf / f), model / f);
  nlohmann::json config = nlohmann::json::parse(read_bytes(hf / "config.json"));
  config["num_hidden_layers"] = 10000000;
  write_bytes(model / "config.json", config.dump());
  check_refused(run_program(gen, "--model " + q(model) + " --prompt-ids 1,5"), "fastinfer-generate", 1,
                "num_hidden_layers 10000000");
  // tokenizer.json with one id of 2^24-1 used to cost 538 MB.
  config["num_hidden_layers"] = 2;
  write_bytes(model / "config.json", config.dump());
  nlohmann::json tok = nlohmann::json::parse(read_bytes(hf / "tokenizer.json"));
  tok["model"]["vocab"]["zzz"] = (1 << 24) - 1;
  fs::remove(model / "tokenizer.json");
  write_bytes(model / "tokenizer.json", tok.dump());
  check_refused(run_program(gen, "--model " + q(model) + " --prompt Hello"), "fastinfer-generate", 1, "unused ids");
}

TEST_CASE("fastinfer-generate: --ctx-size raises a converter's small context to the golden length",
          "[examples][cli][hostile]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  FASTINFER_REQUIRE_SHARED(gguf, "models/stories260K.gguf");
  FASTINFER_REQUIRE_SHARED(golden, "golden/cases/short_2.txt");
  std::string expected;
  for (auto id : fastinfer::testing::read_golden_case(golden).continuation) expected += (expected.empty() ? "" : " ") + std::to_string(id);
  // The file says 128: without --ctx-size the run stops at the context.
  const ProgramRun small = run_program(gen, "--model " + q(gguf) + " --prompt-ids 1,400 --max-new-tokens 200 --print-ids");
  REQUIRE(small.code == 0);
  CHECK(expected.rfind(small.out.substr(0, small.out.size() - 1), 0) == 0);
  CHECK(small.out.size() < expected.size());
  const ProgramRun full =
      run_program(gen, "--model " + q(gguf) + " --ctx-size 512 --prompt-ids 1,400 --max-new-tokens 200 --print-ids");
  REQUIRE(full.code == 0);
  CHECK(full.out == expected + "\n");
}

TEST_CASE("fastinfer-prefix-chat: the defaults fit the context, a context exactly filled is accepted",
          "[examples][cli][hostile]") {
  FASTINFER_REQUIRE_PROGRAM(chat, "fastinfer-prefix-chat");
  const std::string base = "--model synthetic:tiny --weights f32 --batch 2 --turns 2 ";
  const ProgramRun defaults = run_program(chat, base);
  INFO(defaults.err);
  CHECK(defaults.code == 0);
  CHECK(defaults.out.find("system prompt 432 tokens") != std::string::npos);  // 512 - 64 - 16
  // 944 + 64 + 16 = 1024: exactly the context.
  const ProgramRun exact = run_program(chat, base + "--ctx-size 1024 --system-tokens 944 --json");
  INFO(exact.err);
  CHECK(exact.code == 0);
  check_refused(run_program(chat, base + "--ctx-size 1024 --system-tokens 945"), "fastinfer-prefix-chat", 2,
                "exceed the context of 1024");
  check_refused(run_program(chat, base + "--no-such-flag"), "fastinfer-prefix-chat", 2, "no-such-flag");
  check_refused(run_program(chat, "--model /nonexistent.bin"), "fastinfer-prefix-chat", 1, "nonexistent");
}

TEST_CASE("every model-loading program takes --ctx-size and exits 2 on a bad flag", "[examples][cli][hostile]") {
  for (const char* name : {"fastinfer-generate", "fastinfer-serve-bench", "fastinfer-prefix-chat", "fastinfer-kv-eval",
                           "fastinfer-convert", "fastinfer-inflate"}) {
    FASTINFER_REQUIRE_PROGRAM(program, name);
    const ProgramRun help = run_program(program, "--help");
    INFO(name);
    CHECK(help.code == 0);
    CHECK(help.out.find("--ctx-size") != std::string::npos);
    // (convert and inflate name a missing required argument first)
    check_refused(run_program(program, "--no-such-flag"), name, 2, "");
  }
}
