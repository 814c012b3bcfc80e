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

TEST_CASE("cuda attention plan: splits fill whole waves of the blocks an SM holds", "[cuda-plan]") {
  using fastinfer::cuda::SplitPlanOptions;
  SplitPlanOptions three;  // the tensor-core kernel at head_dim 128: 3 blocks an SM
  three.resident_blocks_per_sm = 3;
  three.min_split_keys = 128;
  three.block_overhead_keys = 128;
  // 64 sequences x 8 KV heads = 512 blocks on 132 x 3 = 396 slots: unsplit,
  // a second wave of 116 blocks; three splits make 1536 blocks = 3.9 waves.
  CHECK(plan_splits(64, 8, 4096, 132, 64, three).splits == 3);
  // The same blocks with 4 an SM (528 slots) fit one wave: no split.
  SplitPlanOptions four = three;
  four.resident_blocks_per_sm = 4;
  CHECK(plan_splits(64, 8, 4096, 132, 64, four).splits == 1);
  // A batch-1 decode of 4096 keys: as many splits as the bounds allow in one wave.
  CHECK(plan_splits(1, 8, 4096, 132, 64, three).splits == 32);
}
