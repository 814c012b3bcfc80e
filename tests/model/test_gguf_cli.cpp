// The GGUF programs end to end: fastinfer-convert writes a GGUF from the
// llama2.c checkpoint, fastinfer-generate runs it (and llama.cpp's own
// conversion) to the golden tokens, and prints text with a GGUF vocabulary.
// Skips visibly when the programs were not built.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "program_run.hpp"
#include "shared_dir.hpp"

namespace fs = std::filesystem;

namespace {

using Run = fastinfer::testing::ProgramRun;

Run run(const fs::path& binary, const std::string& args) { return fastinfer::testing::run_program(binary, args); }

fs::path scratch(const std::string& name) {
  return fs::temp_directory_path() / ("fastinfer_gguf_cli_" + std::to_string(::getpid()) + "_" + name);
}

std::string golden_line(const fs::path& file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + ": ", 0) == 0) return line.substr(key.size() + 2);
  return {};
}

}  // namespace


TEST_CASE("fastinfer-convert output and stories260K.gguf generate the golden tokens", "[gguf][cli]") {
  FASTINFER_REQUIRE_PROGRAM(convert, "fastinfer-convert");
  FASTINFER_REQUIRE_PROGRAM(generate, "fastinfer-generate");
  FASTINFER_REQUIRE_SHARED(bin, "models/stories260K.bin");
  FASTINFER_REQUIRE_SHARED(llama_cpp_gguf, "models/stories260K.gguf");
  FASTINFER_REQUIRE_SHARED(golden, "golden/cases/short_2.txt");
  const std::string expected = golden_line(golden, "continuation");  // prompt 1 400, 200 tokens
  REQUIRE_FALSE(expected.empty());

  const fs::path out = scratch("converted.gguf");
  const Run c = run(convert, "'" + bin.string() + "' '" + out.string() + "' --tokenizer '" +
                                 llama_cpp_gguf.string() + "'");
  INFO(c.err);
  REQUIRE(c.code == 0);
  CHECK(c.err.find("with tokenizer") != std::string::npos);

  const Run g = run(generate, "--model '" + out.string() + "' --prompt-ids 1,400 --max-new-tokens 200 --print-ids");
  INFO(g.err);
  CHECK(g.code == 0);
  CHECK(g.out == expected + "\n");
  // llama.cpp's conversion says context_length 128, which the CLI honours:
  // the first 120 tokens must match.
  std::istringstream words(expected);
  std::string first120, w;
  for (int i = 0; i < 120 && words >> w; ++i) first120 += (i ? " " : "") + w;
  const Run l = run(generate, "--model '" + llama_cpp_gguf.string() + "' --prompt-ids 1,400 --max-new-tokens 120 --print-ids");
  CHECK(l.code == 0);
  CHECK(l.out == first120 + "\n");
  // Text through the embedded (stand-in) vocabulary: token i reads " <i>".
  const Run t = run(generate, "--model '" + out.string() + "' --prompt-ids 1,400 --max-new-tokens 3");
  CHECK(t.code == 0);
  CHECK(t.out.rfind("<400> <458> <465> <465>", 0) == 0);

  // Bad usage and bad files: one-line errors with the documented codes.
  const Run q8 = run(convert, "'" + bin.string() + "' '" + out.string() + "' --type q8_0");
  CHECK(q8.code == 2);  // hidden size 172 cannot be Q8_0
  CHECK(q8.err.find("172 columns") != std::string::npos);
  CHECK(run(convert, "'" + bin.string() + "' '" + out.string() + "' --type q4_0").code == 2);
  std::ofstream(scratch("bad.gguf")) << "GGUF but not really";
  const Run bad = run(generate, "--model '" + scratch("bad.gguf").string() + "'");
  CHECK(bad.code == 1);
  CHECK(bad.err.find("fastinfer-generate: error:") == 0);
  fs::remove(scratch("bad.gguf"));
  fs::remove(out);
}
