// fastinfer-generate's contract as a program: exit codes, one-line errors,
// --print-ids and --stats-json output. Runs the built binary; skips visibly
// when it has not been built (FASTINFER_BUILD_EXAMPLES=OFF).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/version.hpp"
#include "program_run.hpp"
#include "shared_dir.hpp"

namespace fs = std::filesystem;

namespace {

using Run = fastinfer::testing::ProgramRun;
using Scratch = fastinfer::testing::ScratchDir;

Run run(const fs::path& binary, const std::string& args) { return fastinfer::testing::run_program(binary, args); }
std::size_t lines(const std::string& s) { return fastinfer::testing::count_lines(s); }

// Sets (or, with nullptr, unsets) an environment variable for the child
// programs a test runs, and puts back what was there. (This process read
// its own kernel settings long ago; the children read theirs at start.)
class EnvScope {
 public:
  EnvScope(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) saved_ = old;
    had_ = old != nullptr;
    set(value);
  }
  void set(const char* value) {
    if (value != nullptr)
      setenv(name_.c_str(), value, 1);
    else
      unsetenv(name_.c_str());
  }
  ~EnvScope() { set(had_ ? saved_.c_str() : nullptr); }
  EnvScope(const EnvScope&) = delete;
  EnvScope& operator=(const EnvScope&) = delete;

 private:
  std::string name_, saved_;
  bool had_ = false;
};

// The "continuation: " ids of a golden case file, as --print-ids prints them.
std::string golden_continuation(const fs::path& golden) {
  std::ifstream in(golden);
  std::string expected;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("continuation: ", 0) == 0) expected = line.substr(14);
  return expected;
}

}  // namespace

#define FASTINFER_REQUIRE_GENERATE(var) FASTINFER_REQUIRE_PROGRAM(var, "fastinfer-generate")

TEST_CASE("fastinfer-generate: bad usage exits 2 with a one-line error", "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  std::string long_prompt = "1";
  for (int i = 1; i < 512; ++i) long_prompt += ",5";  // 512 ids: at synthetic:tiny's maximum length
  for (const std::string& args : std::vector<std::string>{"--no-such-flag", "--max-new-tokens abc", "--max-new-tokens -3", "--threads 0",
                                 "--top-p 1.5", "--weights q4", "--prompt-ids 1,x", "--prompt-ids 1,,2",
                                 "--prompt-ids ''", "--prompt-ids 1,512", "--prompt-ids -1",
                                 "--model synthetic:nope", "--prompt-ids " + long_prompt, "extra positional"}) {
    INFO("args: " << args);
    const Run r = run(gen, args);
    CHECK(r.exited);
    CHECK(r.code == 2);
    CHECK(lines(r.err) == 1);
    CHECK(r.err.rfind("fastinfer-generate: error: ", 0) == 0);
  }
}

TEST_CASE("fastinfer-generate: a bad model file is a one-line error, never a signal", "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  Scratch scratch;
  const fs::path garbage = scratch.dir / "garbage.bin", empty = scratch.dir / "empty.bin";
  {
    std::ofstream g(garbage, std::ios::binary);
    for (int i = 0; i < 1000; ++i) g.put(char(i * 7));
    std::ofstream e(empty, std::ios::binary);
  }
  for (const fs::path& model : {scratch.dir / "missing.bin", garbage, empty, scratch.dir}) {
    INFO("model: " << model);
    const Run r = run(gen, "--model '" + model.string() + "'");
    CHECK(r.exited);
    CHECK(r.code != 0);
    CHECK(lines(r.err) == 1);
  }
}

TEST_CASE("fastinfer-generate: --print-ids reproduces the golden, --stats-json is one JSON object", "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(golden, "golden/cases/short_2.txt");
  const std::string expected = golden_continuation(golden);
  REQUIRE_FALSE(expected.empty());
  const Run r = run(gen, "--model '" + model.string() +
                             "' --prompt-ids 1,400 --max-new-tokens 200 --threads 2 --print-ids --stats-json");
  REQUIRE(r.code == 0);
  CHECK(r.out == expected + "\n");
  REQUIRE(lines(r.err) == 1);
  const auto stats = nlohmann::json::parse(r.err);
  CHECK(stats.at("prompt_tokens") == 2);
  CHECK(stats.at("new_tokens") == 200);
  CHECK(stats.at("prefill_tok_s").get<double>() > 0);
  CHECK(stats.at("decode_tok_s").get<double>() > 0);
  CHECK(stats.at("ttft_ms").get<double>() > 0);
  CHECK(stats.at("weights_bytes") == 1040128);  // 260K f32 values: 4 bytes each (shared classifier once)
  CHECK(stats.at("kv_bytes") == 2 * 5 * 4 * 512 * 8 * 4);
  CHECK(stats.at("cpu_level") == fastinfer::cpu::cpu_level_name(fastinfer::cpu::cpu_level()));
  CHECK(stats.at("float_kernels") == fastinfer::cpu::float_kernel_isa());
  CHECK(stats.at("q8_0_kernels") == fastinfer::cpu::q8_0::kernel_isa());
  CHECK(stats.at("bf16_dot") == fastinfer::cpu::bf16_dot_running());
  CHECK(stats.at("one_row_walk") == fastinfer::cpu::one_row_walk_name(fastinfer::cpu::one_row_walk()));
  CHECK(stats.at("batch_invariant") == fastinfer::cpu::batch_invariant());
}

TEST_CASE("fastinfer-generate: --version names the CPU level, FASTINFER_CPU_LEVEL lowers it, a bad one is a usage error",
          "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  EnvScope level("FASTINFER_CPU_LEVEL", nullptr);
  const Run plain = run(gen, "--version");
  level.set("scalar");
  const Run scalar = run(gen, "--version");
  level.set("avx9");
  const Run bad = run(gen, "--version");
  CHECK(plain.code == 0);
  CHECK(plain.out ==
        std::string("fastinfer-generate ") + fastinfer::kVersionString + "; cpu level " +
            fastinfer::cpu::cpu_level_name(fastinfer::cpu::detected_cpu_level()) + " (detected " +
            fastinfer::cpu::cpu_level_name(fastinfer::cpu::detected_cpu_level()) + "; float kernels " +
            fastinfer::cpu::float_kernel_isa(fastinfer::cpu::detected_cpu_level()) + ", q8_0 " +
            fastinfer::cpu::q8_0::kernel_isa(fastinfer::cpu::detected_cpu_level()) + ", attention " +
            fastinfer::cpu::attention_kernel_isa(fastinfer::cpu::detected_cpu_level(), 16) +
            ", elementwise " + fastinfer::cpu::isa_name() + ", bf16 dot widen, one-row walk " +
            fastinfer::cpu::one_row_walk_name(fastinfer::cpu::one_row_walk()) + ")\n");
  CHECK(scalar.code == 0);
  CHECK(scalar.out.rfind("fastinfer-generate " + std::string(fastinfer::kVersionString) + "; cpu level scalar (detected ", 0) == 0);
  CHECK(bad.code == 2);
  CHECK(bad.err ==
        "fastinfer-generate: error: FASTINFER_CPU_LEVEL=avx9: unknown CPU level (choose scalar, avx2, avx512 "
        "or amx)\n");
}

TEST_CASE(
    "fastinfer-generate: FASTINFER_BF16_DOT picks the bf16 kernels where the CPU has them, a bad one is a "
    "usage error",
    "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  EnvScope mode("FASTINFER_BF16_DOT", "bf16");
  const Run pairs = run(gen, "--version");
  const Run stats = run(gen, "--weights bf16 --max-new-tokens 3 --stats-json");
  mode.set("fast");
  const Run bad = run(gen, "--version");
  // Where the CPU lacks AVX512-BF16 (or the level is forced below avx512) the widening kernels run.
  const std::string running =
      fastinfer::cpu::bf16_dot_supported() && fastinfer::cpu::cpu_level() >= fastinfer::cpu::CpuLevel::avx512
          ? "bf16"
          : "widen";
  CHECK(pairs.code == 0);
  const std::string summary =
      running == "bf16" && fastinfer::cpu::cpu_level() >= fastinfer::cpu::CpuLevel::amx ? "bf16 on amx tiles"
                                                                                        : running;
  CHECK(pairs.out.find(", bf16 dot " + summary + ", one-row walk ") != std::string::npos);
  REQUIRE(stats.code == 0);
  CHECK(nlohmann::json::parse(stats.err).at("bf16_dot") == running);
  CHECK(bad.code == 2);
  CHECK(bad.err ==
        "fastinfer-generate: error: FASTINFER_BF16_DOT=fast: unknown bf16 dot mode (choose widen or bf16)\n");
}

TEST_CASE(
    "fastinfer-generate: FASTINFER_ONE_ROW_WALK sets the walk it reports and a bad one is a usage error",
    "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  EnvScope walk("FASTINFER_ONE_ROW_WALK", "by-length");
  const Run by_length = run(gen, "--version");
  const Run stats = run(gen, "--weights bf16 --max-new-tokens 3 --stats-json");
  walk.set("tiles");
  const Run tiles = run(gen, "--version");
  walk.set("rows");
  const Run bad = run(gen, "--max-new-tokens 3");
  CHECK(by_length.code == 0);
  CHECK(by_length.out.find(", one-row walk by-length)\n") != std::string::npos);
  CHECK(tiles.out.find(", one-row walk tiles)\n") != std::string::npos);
  REQUIRE(stats.code == 0);
  CHECK(nlohmann::json::parse(stats.err).at("one_row_walk") == "by-length");
  CHECK(bad.code == 2);
  CHECK(bad.err ==
        "fastinfer-generate: error: FASTINFER_ONE_ROW_WALK=rows: unknown one-row walk (choose tiles or "
        "by-length)\n");
}

TEST_CASE("fastinfer-generate: synthetic default model with converted weights runs", "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  for (const char* w : {"f32", "bf16", "f16"}) {
    const Run r = run(gen, std::string("--weights ") + w + " --max-new-tokens 5 --print-ids");
    INFO("weights " << w << ": " << r.err);
    CHECK(r.code == 0);
    std::istringstream ids(r.out);
    int count = 0;
    for (int id; ids >> id; ++count) CHECK((id >= 0 && id < 512));
    CHECK(count <= 5);
    CHECK(lines(r.out) == 1);
  }
}

TEST_CASE("fastinfer-generate: sampling is reproducible per seed, whatever the threads", "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  const std::string args = "--max-new-tokens 20 --temperature 1.0 --top-k 50 --top-p 0.9 --print-ids --seed ";
  const Run a = run(gen, args + "7"), b = run(gen, args + "7 --threads 2"), c = run(gen, args + "8");
  REQUIRE(a.code == 0);
  CHECK(a.out == b.out);
  CHECK(a.out != c.out);
  CHECK(run(gen, "--temperature -1").code == 2);
}

TEST_CASE("fastinfer-generate: --profile prints the op table, --profile-json writes it, output unchanged",
          "[examples][cli][profiler]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  Scratch scratch;
  const fs::path json_path = scratch.dir / "profile.json";
  const std::string base = "--prompt-ids 1,20,30 --max-new-tokens 6 --print-ids";
  const Run plain = run(gen, base);
  // Ceilings given: nothing measured, the run stays fast.
  const Run r = run(gen, base + " --profile --profile-json '" + json_path.string() +
                             "' --roofline-gbs 10 --roofline-gflops 100");
  REQUIRE(r.code == 0);
  CHECK(r.out == plain.out);
  CHECK(r.err.find("decode: ") != std::string::npos);
  CHECK(r.err.find("ops sum") != std::string::npos);
  const auto j = nlohmann::json::parse(fastinfer::testing::read_bytes(json_path));
  CHECK(j.at("roofline").at("read_gbs") == 10.0);
  CHECK(j.at("roofline").at("peak_gflops") == 100.0);
  std::istringstream ids(r.out);
  int emitted = 0;
  for (int id; ids >> id;) ++emitted;
  CHECK(j.at("phases").at("prefill").at("passes") == 1);
  CHECK(j.at("phases").at("prefill").at("rows") == 3);
  // The last token is not fed back: one decode pass per emitted token but the last.
  if (emitted > 1) CHECK(j.at("phases").at("decode").at("passes") == emitted - 1);
  CHECK(j.at("ops_s").get<double>() <= j.at("measured_s").get<double>());

  const Run bad = run(gen, base + " --profile-json '" + (scratch.dir / "no" / "such" / "dir.json").string() + "'");
  CHECK(bad.code == 2);
  CHECK(lines(bad.err) == 1);
  CHECK(bad.err.find("--profile-json") != std::string::npos);
}

TEST_CASE("fastinfer-generate: early exit and Medusa under --spec-rule coupled print plain's tokens", "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(golden, "golden/cases/short_2.txt");
  const std::string expected = golden_continuation(golden);
  const std::string m = "--model '" + model.string() + "' --print-ids ";
  const Run greedy = run(gen, m + "--prompt-ids 1,400 --max-new-tokens 200 --spec early-exit --exit-layer 2");
  REQUIRE(greedy.code == 0);
  CHECK(greedy.out == expected + "\n");
  // Sampled: the coupled rule emits exactly plain sampling's tokens (issue 17: Medusa used to ignore the rule).
  const std::string sampled = m + "--max-new-tokens 80 --temperature 0.8 --seed 5 ";
  const Run plain = run(gen, sampled);
  REQUIRE(plain.code == 0);
  for (const char* spec : {"--spec medusa --spec-rule coupled", "--spec medusa --spec-rule coupled --medusa-tree choices",
                           "--spec early-exit --spec-rule coupled"}) {
    const Run r = run(gen, sampled + spec);
    INFO(spec << ": " << r.err);
    CHECK(r.code == 0);
    CHECK(r.out == plain.out);
  }
  // Lossy confidence-gated exit: runs, reports the mean depth; bad or conflicting options exit 2.
  const Run calm = run(gen, "--model '" + model.string() + "' --max-new-tokens 40 --print-ids --stats-json "
                            "--early-exit-threshold 0.5 --early-exit-min-layer 2");
  REQUIRE(calm.code == 0);
  const auto stats = nlohmann::json::parse(calm.err);
  CHECK(stats.at("mean_layers").get<double>() >= 2.0);
  CHECK(stats.at("mean_layers").get<double>() <= 5.0);
  CHECK(run(gen, "--early-exit-threshold 1.5").code == 2);
  CHECK(run(gen, "--early-exit-threshold 0.5 --spec prompt-lookup").code == 2);
  CHECK(run(gen, "--spec early-exit --exit-layer 99").code == 2);
}

TEST_CASE("fastinfer-generate: FASTINFER_BATCH_INVARIANT=1 is reported and a bad value is a usage error",
          "[examples][cli]") {
  FASTINFER_REQUIRE_GENERATE(gen);
  EnvScope invariant("FASTINFER_BATCH_INVARIANT", "1");
  const Run on = run(gen, "--version");
  const Run stats = run(gen, "--max-new-tokens 3 --stats-json");
  invariant.set("yes");
  // A one-token prompt and one new token: no pass of more than one row.
  const Run bad = run(gen, "--prompt-ids 1 --max-new-tokens 1");
  CHECK(on.code == 0);
  CHECK(on.out.find(", batch invariant)\n") != std::string::npos);
  REQUIRE(stats.code == 0);
  CHECK(nlohmann::json::parse(stats.err).at("batch_invariant") == true);
  CHECK(bad.code == 2);
  CHECK(bad.err ==
        "fastinfer-generate: error: FASTINFER_BATCH_INVARIANT=yes: unknown batch invariance setting "
        "(choose 0 or 1)\n");
}
