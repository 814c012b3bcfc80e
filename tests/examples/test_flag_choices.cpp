// The example programs' flag choice lists against the library's own name
// tables (examples/common/): what --help offers is exactly what the library
// names, and a choice offered is a choice that runs. The drift this guards
// against: fastinfer-serve-bench offered --draft-weights q8_0 (its list came
// from dtype_name) but parsed it with a parser that knew three types, so the
// run ended "unknown weight type 'q8_0'"; fastinfer-generate's multi-prompt
// path once did the same with --weights.
#include <catch2/catch.hpp>

#include <regex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fastinfer/model/weight_convert.hpp"
#include "fastinfer/sched/scheduler_policy.hpp"
#include "fastinfer/speculative/speculative_verifier.hpp"
#include "program_run.hpp"

using fastinfer::testing::ProgramRun;
using fastinfer::testing::run_program;

namespace {

// The {a,b,c} choices CLI11's --help prints after `flag`'s type.
std::set<std::string> help_choices(const std::string& help, const std::string& flag) {
  const std::regex re(flag + " [A-Z]+:\\{([^}]*)\\}");
  std::smatch m;
  INFO(flag << " in:\n" << help);
  REQUIRE(std::regex_search(help, m, re));
  std::set<std::string> out;
  const std::string list = m[1];
  for (std::size_t start = 0;;) {
    const std::size_t comma = list.find(',', start);
    out.insert(list.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::set<std::string> library_weight_names(bool with_q8_0 = true) {
  std::set<std::string> out;
  for (fastinfer::DType t : fastinfer::kLoadWeightTypes)
    if (with_q8_0 || t != fastinfer::DType::Q8_0) out.emplace(fastinfer::dtype_name(t));
  return out;
}

}  // namespace

TEST_CASE("parse_weight_dtype reads every kLoadWeightTypes name and lists them when it refuses one",
          "[examples][cli]") {
  for (fastinfer::DType t : fastinfer::kLoadWeightTypes)
    CHECK(fastinfer::parse_weight_dtype(fastinfer::dtype_name(t)) == t);
  CHECK_THROWS_WITH(fastinfer::parse_weight_dtype("q4_0"),
                    Catch::Contains("'q4_0'") && Catch::Contains("f32, bf16, f16, q8_0"));
}

TEST_CASE("the --weights, --draft-weights, --spec-rule and --preemption lists are the library's names", "[examples][cli]") {
  FASTINFER_REQUIRE_PROGRAM(gen, "fastinfer-generate");
  FASTINFER_REQUIRE_PROGRAM(serve, "fastinfer-serve-bench");
  const ProgramRun g = run_program(gen, "--help");
  REQUIRE(g.code == 0);
  CHECK(help_choices(g.out, "--weights") == library_weight_names());
  CHECK(help_choices(g.out, "--draft-weights") == library_weight_names());
  const std::set<std::string> rules{fastinfer::speculative::acceptance_rule_name(fastinfer::speculative::AcceptanceRule::Exact),
                                    fastinfer::speculative::acceptance_rule_name(fastinfer::speculative::AcceptanceRule::Coupled)};
  CHECK(help_choices(g.out, "--spec-rule") == rules);
  const ProgramRun s = run_program(serve, "--help");
  REQUIRE(s.code == 0);
  CHECK(help_choices(s.out, "--weights") == library_weight_names());
  CHECK(help_choices(s.out, "--draft-weights") == library_weight_names());
  std::set<std::string> preemptions;
  for (const fastinfer::sched::PreemptionPolicy& p :
       {fastinfer::sched::PreemptionPolicy(fastinfer::sched::Recompute{}),
        fastinfer::sched::PreemptionPolicy(fastinfer::sched::Swap{}),
        fastinfer::sched::PreemptionPolicy(fastinfer::sched::NoEviction{})})
    preemptions.emplace(fastinfer::sched::policy_name(p));
  CHECK(help_choices(s.out, "--preemption") == preemptions);
}

TEST_CASE("fastinfer-serve-bench runs a draft model of every --draft-weights type it offers", "[examples][cli]") {
  FASTINFER_REQUIRE_PROGRAM(serve, "fastinfer-serve-bench");
  // synthetic:15M: q8_0 needs rows that are multiples of 32 (tiny's 172 are not).
  for (const std::string& w : library_weight_names()) {
    const ProgramRun r = run_program(serve, "--model synthetic:15M --threads 1 --requests 2 --prompt-len 8 "
                                            "--output-len 3 --no-static --json --spec draft --draft-weights " + w);
    INFO("--draft-weights " << w << ": " << r.err);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j.at("continuous").at("generated_tokens").get<long long>() == 6);
  }
  // Each --preemption name is the policy the JSON reports.
  const ProgramRun r = run_program(serve, "--model synthetic:tiny --threads 1 --requests 2 --output-len 2 --no-static "
                                          "--json --preemption no_eviction");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("no_eviction") != std::string::npos);
}
