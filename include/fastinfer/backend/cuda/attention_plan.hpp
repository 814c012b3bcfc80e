// The host-side plan of the CUDA attention kernel (attention.cuh): how many
// key splits (flash-decoding) each (query row, query head) gets. Plain data
// and std only, so it is tested without a GPU (tests/backend/cuda/test_attention_plan.cpp).
//
// Few rows (decode of a small batch) leave most SMs idle with one block per
// (row, head): splitting the keys gives every SM work, and the exact
// log-sum-exp merge makes the result independent of the split (up to f32
// rounding). Short sequences are not split: each split costs a partial
// write and a merge read of head_dim + 2 floats.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastinfer::cuda {

struct SplitPlan {
  int splits = 1;          // key ranges per (row, head)
  std::int64_t chunk = 0;  // keys per range, a multiple of the tile
};

struct SplitPlanOptions {
  int resident_blocks_per_sm = 4;          // blocks an SM runs at once (a wave is sm_count of these)
  int max_splits = 64;
  std::int64_t min_split_keys = 256;       // no range shorter than this is made
  std::int64_t block_overhead_keys = 128;  // a block's fixed cost, in keys' worth of streaming
};

// rows x n_q_heads blocks before splitting; `longest` keys in the longest
// sequence; `tile` keys per kernel tile.
//
// The split count minimises the launch's time modelled as waves x (keys a
// block streams + its fixed cost): blocks run in waves of sm_count x
// resident_blocks_per_sm, and a last wave barely started costs as long as
// a full one. 64 sequences x 8 KV heads on 132 SMs holding 3 blocks each
// is 1.29 waves unsplit (the second wave runs 29 % of the device): three
// splits make it 3.9 waves of a third of the keys. Ties go to fewer splits
// (fewer partials to write and merge).
inline SplitPlan plan_splits(std::int64_t rows, int n_q_heads, std::int64_t longest, int sm_count, int tile,
                             const SplitPlanOptions& o = {}) {
  const std::int64_t items = std::max<std::int64_t>(1, rows * n_q_heads);
  const std::int64_t wave =
      std::max<std::int64_t>(1, std::int64_t(sm_count) * std::max(1, o.resident_blocks_per_sm));
  const std::int64_t keys = std::max<std::int64_t>(longest, 1);
  const std::int64_t most = std::min<std::int64_t>(std::max<std::int64_t>(1, longest / o.min_split_keys),
                                                   std::max(1, o.max_splits));
  auto chunk_of = [&](std::int64_t splits) {
    const std::int64_t per = (keys + splits - 1) / splits;
    return (per + tile - 1) / tile * tile;
  };
  SplitPlan best;
  std::int64_t best_cost = -1;
  for (std::int64_t s = 1; s <= most; ++s) {
    const std::int64_t chunk = chunk_of(s);
    // Rounding the chunk up to the tile may leave the last splits with no key.
    const std::int64_t used = (keys + chunk - 1) / chunk;
    if (used != s) continue;
    const std::int64_t waves = (items * s + wave - 1) / wave;
    const std::int64_t cost = waves * (chunk + o.block_overhead_keys);
    if (best_cost < 0 || cost < best_cost) best = SplitPlan{int(s), chunk}, best_cost = cost;
  }
  return best;
}

}  // namespace fastinfer::cuda
