// fastinfer-generate --spec eagle and --spec mtp: greedy output is plain
// greedy's, coupled sampling is plain sampling's, --stats-json reports
// mean_accepted_per_step, and bad EAGLE / MTP flags are one-line errors
// (usage: exit 2; bad files: exit 1).
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "fastinfer/speculative/eagle_head.hpp"
#include "fastinfer/speculative/mtp_heads.hpp"
#include "file_bytes.hpp"
#include "program_run.hpp"
#include "shared_dir.hpp"

namespace {

using fastinfer::testing::count_lines;
using fastinfer::testing::ProgramRun;
using fastinfer::testing::run_program;

std::string generated(const ProgramRun& r) {
  const auto at = r.out.find("generated:");
  return at == std::string::npos ? std::string() : r.out.substr(at);
}

void check_error(const ProgramRun& r, int code, const std::string& mention) {
  INFO("stderr: " << r.err);
  CHECK(r.exited);
  CHECK(r.code == code);
  CHECK(count_lines(r.err) == 1);
  CHECK(r.err.find(mention) != std::string::npos);
}

// Greedy and coupled-sampling runs with `spec` print plain's tokens, and
// --stats-json (in spec) reports the passes.
void check_same_as_plain(const std::filesystem::path& gen, const std::string& base, const std::string& spec) {
  for (const std::string mode : {"", " --temperature 0.8 --seed 3 --spec-rule coupled"}) {
    const ProgramRun plain = run_program(gen, base + mode);
    const ProgramRun drafted = run_program(gen, base + mode + spec);
    INFO("mode '" << mode << "' stderr: " << drafted.err);
    REQUIRE(plain.code == 0);
    REQUIRE(drafted.code == 0);
    CHECK(generated(drafted) == generated(plain));
    CHECK(generated(drafted).size() > 100);
    const auto stats = nlohmann::json::parse(drafted.err.substr(drafted.err.find('{')));
    CHECK(stats["mean_accepted_per_step"].get<double>() >= 1.0);
    CHECK(stats["target_forwards"].get<int>() >= 1);
  }
}

}  // namespace

TEST_CASE("fastinfer-generate --spec eagle: plain greedy and coupled sampling outputs, stats, bad flags",
          "[examples][cli]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  const std::string base = "--model '" + model.string() + "' --prompt-ids 1 --max-new-tokens 80";
  check_same_as_plain(gen, base, " --spec eagle --eagle-heads random:2 --stats-json");
  const ProgramRun tuned = run_program(gen, base + " --spec eagle --eagle-depth 3 --eagle-top-k 2 --eagle-budget 5");
  CHECK(tuned.code == 0);
  check_error(run_program(gen, base + " --eagle-heads random:1"), 2, "--eagle-heads is not used without --spec eagle");
  check_error(run_program(gen, base + " --eagle-budget 4"), 2, "--eagle-budget");
  check_error(run_program(gen, base + " --spec eagle --eagle-top-k 0"), 2, "--eagle-top-k");
  check_error(run_program(gen, base + " --spec eagle --eagle-heads random:x"), 2, "seed");
  check_error(run_program(gen, base + " --spec eagle --eagle-heads /nonexistent/h.eagle"), 1, "nonexistent");
  fastinfer::testing::ScratchDir tmp;
  const auto wrong = tmp.dir / "wide.eagle";
  fastinfer::speculative::EagleHead::random(1, fastinfer::speculative::EagleHeadShape{96, 512, 2, 1, 8, 16}).save(wrong.string());
  check_error(run_program(gen, base + " --spec eagle --eagle-heads '" + wrong.string() + "'"), 2, "has dim 96");
  check_error(run_program(gen, base + " --spec eagle --eagle-heads 'pad:" + wrong.string() + "'"), 2, "wider");
}

TEST_CASE("fastinfer-generate --spec mtp: plain greedy and coupled sampling outputs, stats, bad flags",
          "[examples][cli]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  FASTINFER_REQUIRE_SHARED(model, "models/stories260K.bin");
  const std::string base = "--model '" + model.string() + "' --prompt-ids 1 --max-new-tokens 80";
  check_same_as_plain(gen, base, " --spec mtp --mtp-heads random:2 --eagle-depth 4 --eagle-budget 8 --stats-json");
  check_error(run_program(gen, base + " --mtp-heads random:1"), 2, "--mtp-heads is not used without --spec mtp");
  check_error(run_program(gen, base + " --spec mtp --eagle-heads random:1"), 2, "--eagle-heads");
  check_error(run_program(gen, base + " --spec mtp --mtp-heads random:x"), 2, "seed");
  check_error(run_program(gen, base + " --spec mtp --mtp-heads /nonexistent/h.mtp"), 1, "nonexistent");
  fastinfer::testing::ScratchDir tmp;
  const auto eagle_file = tmp.dir / "h.eagle";
  fastinfer::speculative::EagleHead::random(1, fastinfer::speculative::EagleHeadShape{64, 512, 8, 4, 8, 172}).save(eagle_file.string());
  check_error(run_program(gen, base + " --spec mtp --mtp-heads '" + eagle_file.string() + "'"), 1, "not an MTP heads file");
  const auto wrong = tmp.dir / "wide.mtp";
  fastinfer::speculative::MtpHeads::random(1, 2, fastinfer::speculative::EagleHeadShape{96, 512, 2, 1, 8, 16}).save(wrong.string());
  check_error(run_program(gen, base + " --spec mtp --mtp-heads '" + wrong.string() + "'"), 2, "has dim 96");
  check_error(run_program(gen, base + " --spec mtp --mtp-heads 'pad:" + wrong.string() + "'"), 2, "wider");
}
