// One sampling-parameter struct: the scheduler's request, the generation
// loop's parameters and the CPU sampler all hold fastinfer::SamplingParams,
// and its validation names the field and value it refuses.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/model/generate.hpp"
#include "fastinfer/sched/request.hpp"

TEST_CASE("SamplingParams is the one struct the scheduler, the sampler and generation hold", "[sampling]") {
  STATIC_REQUIRE(std::is_same<decltype(fastinfer::sched::Request::sampling), fastinfer::SamplingParams>::value);
  // The two old names still compile (deprecated) and name the same struct.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  STATIC_REQUIRE(std::is_same<fastinfer::sched::SamplingConfig, fastinfer::SamplingParams>::value);
  STATIC_REQUIRE(std::is_same<fastinfer::cpu::SamplingParams, fastinfer::SamplingParams>::value);
#pragma GCC diagnostic pop
  STATIC_REQUIRE(std::is_base_of<fastinfer::SamplingParams, fastinfer::GenerationParams>::value);
  fastinfer::GenerationParams g;
  g.temperature = 0.7f;
  g.top_k = 40;
  g.top_p = 0.9f;
  g.seed = 11;
  g.max_new_tokens = 3;
  const fastinfer::SamplingParams s = fastinfer::sampling_params(g);
  CHECK(s.temperature == 0.7f);
  CHECK(s.top_k == 40);
  CHECK(s.top_p == 0.9f);
  CHECK(s.seed == 11);
  // Defaults: greedy, no filter.
  const fastinfer::SamplingParams d;
  CHECK(d.temperature == 0.0f);
  CHECK(d.top_k == 0);
  CHECK(d.top_p == 1.0f);
}

TEST_CASE("validate(SamplingParams) names the field and the value it refuses", "[sampling]") {
  fastinfer::SamplingParams p;
  CHECK_NOTHROW(fastinfer::validate(p));
  p.temperature = -1.0f;
  CHECK_THROWS_WITH(fastinfer::validate(p), Catch::Contains("temperature") && Catch::Contains("-1"));
  p.temperature = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(fastinfer::validate(p), fastinfer::InvalidArgument);
  p.temperature = 1.0f;
  p.top_k = -2;
  CHECK_THROWS_WITH(fastinfer::validate(p), Catch::Contains("top_k") && Catch::Contains("-2"));
  p.top_k = 0;
  for (float bad : {0.0f, 1.5f, std::nanf("")}) {
    p.top_p = bad;
    CHECK_THROWS_WITH(fastinfer::validate(p), Catch::Contains("top_p"));
  }
  // A subnormal T, whose inverse overflows, is refused (the CPU sampler
  // returned token 0 for it: a NaN weight at the maximum); the smallest
  // normal T samples the maximum.
  p.top_p = 1.0f;
  p.temperature = 1e-40f;
  CHECK_THROWS_WITH(fastinfer::validate(p), Catch::Contains("temperature") && Catch::Contains("FLT_MAX"));
  p.temperature = std::numeric_limits<float>::min();
  CHECK_NOTHROW(fastinfer::validate(p));
  const float logits[4] = {0.5f, 2.0f, 1.999f, -1.0f};
  fastinfer::cpu::SamplerWorkspace ws(4);
  for (std::uint64_t index = 0; index < 8; ++index)
    CHECK(fastinfer::cpu::sample_at_index(logits, 4, p, index, ws) == 1);
}
