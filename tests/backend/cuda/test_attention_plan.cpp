// The CUDA attention's split plan (backend/cuda/attention_plan.hpp): plain
// host data, so it runs in every build, GPU or not.
#include <catch2/catch.hpp>

#include <cstdint>

#include "fastinfer/backend/cuda/attention_plan.hpp"

using fastinfer::cuda::plan_splits;
using fastinfer::cuda::SplitPlan;

TEST_CASE("cuda attention plan: the splits cover every key in tile multiples, within the bounds", "[cuda-plan]") {
  for (std::int64_t rows : {1, 3, 64, 512})
    for (int heads : {1, 8, 32})
      for (std::int64_t longest : {1, 100, 255, 256, 257, 1100, 4096, 32768, 1000000})
        for (int sms : {1, 132}) {
          INFO(rows << " rows, " << heads << " heads, " << longest << " keys, " << sms << " SMs");
          const SplitPlan p = plan_splits(rows, heads, longest, sms, 128);
          REQUIRE(p.splits >= 1);
          REQUIRE(p.splits <= 64);
          REQUIRE(p.chunk % 128 == 0);
          REQUIRE(p.chunk > 0);
          // Every key falls in some split, and no split starts past the keys.
          CHECK(std::int64_t(p.splits) * p.chunk >= longest);
          CHECK(std::int64_t(p.splits - 1) * p.chunk < std::max<std::int64_t>(longest, 1));
          // No split is shorter than the minimum unless there is only one.
          CHECK((p.splits == 1 || longest / p.splits >= 256));
        }
}

TEST_CASE("cuda attention plan: decode of a small batch splits long sequences, big steps are not split",
          "[cuda-plan]") {
  // 4 sequences x 32 heads on 132 SMs: 128 blocks, 4 waves want about 4 splits.
  CHECK(plan_splits(4, 32, 8192, 132, 128).splits == 4);
  // A single sequence of 64k tokens, 8 heads: capped at 64 splits.
  CHECK(plan_splits(1, 8, 65536, 132, 128).splits == 64);
  // Short keys: one split however idle the device.
  CHECK(plan_splits(1, 8, 300, 132, 128).splits == 1);
  // A prefill of 512 rows fills the device alone.
  CHECK(plan_splits(512, 32, 4096, 132, 128).splits == 1);
}
