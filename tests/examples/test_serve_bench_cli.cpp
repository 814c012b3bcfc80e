// fastinfer-serve-bench's JSON as scripts/report.sh reads it: --samples gives
// every request's TTFT and every inter-token gap, consistent with the counts
// and percentiles of the same run; --kv selects the KV format; --spec eagle,
// mtp, medusa and lookahead draft trees in the engine (lookahead with its
// window beside them), and their flags are refused without them. Runs the built binary;
// skips visibly when it has not been built.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace {

// stdout of `command` (stderr discarded) and its exit status.
std::string stdout_of(const std::string& command, int* status) {
  std::string out;
  FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) out.append(buffer, n);
  *status = pclose(pipe);
  return out;
}

}  // namespace

TEST_CASE("fastinfer-serve-bench: --samples lists every TTFT and inter-token gap, --kv sets the format",
          "[examples][cli][profiler]") {
  const fs::path serve = fs::path(FASTINFER_BINARY_DIR) / "examples" / "fastinfer-serve-bench";
  if (!fs::exists(serve)) {
    std::printf("FASTINFER_SKIP: %s not built\n", serve.c_str());
    WARN("FASTINFER_SKIP: " << serve << " not built");
    return;
  }
  int status = -1;
  const std::string out = stdout_of("'" + serve.string() +
                                        "' --model synthetic:tiny --threads 1 --requests 5 --rate 0 --prompt-len 4:12 "
                                        "--output-len 3:6 --max-seqs 2 --kv int8 --no-static --json --samples",
                                    &status);
  REQUIRE(status == 0);
  const auto j = nlohmann::json::parse(out);
  CHECK(j.at("config").at("kv") == "int8");
  const auto& c = j.at("continuous");
  const auto ttft = c.at("ttft_ms").get<std::vector<double>>();
  const auto itl = c.at("itl_ms").get<std::vector<double>>();
  // One TTFT per request; one gap per generated token after each request's first.
  CHECK(ttft.size() == 5);
  CHECK(std::int64_t(itl.size()) == c.at("generated_tokens").get<std::int64_t>() - 5);
  for (double x : ttft) CHECK(x >= 0);
  for (double x : itl) CHECK(x >= 0);
  // The summary's percentiles are among the samples (nearest-rank percentiles).
  const double p50 = c.at("ttft_ms_p50").get<double>();
  CHECK(std::any_of(ttft.begin(), ttft.end(), [&](double x) { return std::abs(x - p50) < 1e-6; }));
  CHECK(c.at("ttft_ms_p99").get<double>() == Approx(*std::max_element(ttft.begin(), ttft.end())));

  // Without --samples the arrays are absent; a bad --kv is refused.
  const auto plain = nlohmann::json::parse(stdout_of(
      "'" + serve.string() + "' --model synthetic:tiny --threads 1 --requests 2 --output-len 2 --no-static --json",
      &status));
  CHECK(status == 0);
  CHECK_FALSE(plain.at("continuous").contains("ttft_ms"));
  CHECK(plain.at("config").at("kv") == "f32");
  stdout_of("'" + serve.string() + "' --model synthetic:tiny --kv int3 --json", &status);
  CHECK(status != 0);
}

TEST_CASE(
    "fastinfer-serve-bench: --spec eagle, mtp, medusa and lookahead draft token trees, their flags need them",
    "[examples][cli][spec]") {
  const fs::path serve = fs::path(FASTINFER_BINARY_DIR) / "examples" / "fastinfer-serve-bench";
  if (!fs::exists(serve)) {
    std::printf("FASTINFER_SKIP: %s not built\n", serve.c_str());
    WARN("FASTINFER_SKIP: " << serve << " not built");
    return;
  }
  const std::string base =
      "'" + serve.string() +
      "' --model synthetic:tiny --threads 1 --requests 4 --prompt-len 6:12 --output-len 8:16 "
      "--no-static --json --spec-policy always ";
  int status = -1;
  const std::pair<std::string, std::string> trees[] = {{"eagle", "--eagle-head random:3"},
                                                       {"mtp", "--mtp-heads random:3 --eagle-depth 2"},
                                                       {"medusa", "--medusa-heads random:3"},
                                                       {"lookahead", "--lookahead 3,3,4"}};
  for (const auto& [kind, flags] : trees) {
    INFO(kind << " " << flags);
    const auto j =
        nlohmann::json::parse(stdout_of(base + "--spec " + kind + " " + flags + " --spec-k 5", &status));
    REQUIRE(status == 0);
    const auto& s = j.at("continuous").at("spec");
    CHECK(j.at("config").at("spec") == kind);
    CHECK(s.at("rows").get<std::int64_t>() > 0);
    CHECK(s.at("drafted").get<std::int64_t>() >= s.at("accepted").get<std::int64_t>());
    CHECK(s.at("accepted").get<std::int64_t>() >= s.at("refed").get<std::int64_t>());
    CHECK((s.at("window_rows").get<std::int64_t>() > 0) == (kind == "lookahead"));
  }
  // Refused: a drafter without its heads, a drafter's flag without it, a
  // bad lookahead window, one a step's budget cannot hold (15 rows).
  for (const char* bad :
       {"--spec eagle", "--spec draft --eagle-head random:1",
        "--spec eagle --mtp-heads random:1 --eagle-head random:1", "--spec medusa",
        "--spec eagle --eagle-head random:1 --medusa-heads random:1",
        "--spec prompt-lookup --lookahead 3,3,4", "--spec medusa --medusa-heads random:1 --eagle-depth 2",
        "--spec lookahead --lookahead 0,3,4", "--spec lookahead --lookahead 5,4",
        "--spec lookahead --lookahead 5,4,5 --max-tokens-per-step 12"}) {
    INFO(bad);
    stdout_of(base + bad, &status);
    CHECK(status != 0);
  }
}
