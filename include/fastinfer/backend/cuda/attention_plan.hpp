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
  int waves = 4;                       // aim for this many blocks per SM
  int max_splits = 64;
  std::int64_t min_split_keys = 256;   // no range shorter than this is made
};

// rows x n_q_heads blocks before splitting; `longest` keys in the longest
// sequence; `tile` keys per kernel tile.
inline SplitPlan plan_splits(std::int64_t rows, int n_q_heads, std::int64_t longest, int sm_count, int tile,
                             const SplitPlanOptions& o = {}) {
  SplitPlan p;
  const std::int64_t items = std::max<std::int64_t>(1, rows * n_q_heads);
  const std::int64_t want = std::max<std::int64_t>(1, std::int64_t(o.waves) * sm_count / items);
  const std::int64_t most = std::max<std::int64_t>(1, longest / o.min_split_keys);
  p.splits = int(std::min<std::int64_t>({want, most, std::int64_t(o.max_splits)}));
  const std::int64_t per = (std::max<std::int64_t>(longest, 1) + p.splits - 1) / p.splits;
  p.chunk = (per + tile - 1) / tile * tile;
  // Rounding the chunk up to the tile may leave the last splits with no key.
  p.splits = int((std::max<std::int64_t>(longest, 1) + p.chunk - 1) / p.chunk);
  return p;
}

}  // namespace fastinfer::cuda
