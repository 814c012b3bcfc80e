// What the per-ISA attention kernels (attention_avx2.hpp, attention_avx512.hpp)
// share and that needs no vector instructions: the running softmax state of
// a group of query heads, which keys a query sees, and the per-row scale of
// each KV format. Kept out of the target regions, so both kernel sets and the
// driver (attention.hpp) use one definition.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastinfer/kv/kv_quant.hpp"

namespace fastinfer::cpu::attention_detail {

// Running softmax state of G query heads.
struct State {
  std::vector<float> m, l, o;  // [G], [G], [G * d]
  void reset(int g, int d) {
    m.assign(std::size_t(g), -std::numeric_limits<float>::infinity());
    l.assign(std::size_t(g), 0.0f);
    o.assign(std::size_t(g) * std::size_t(d), 0.0f);
  }
};

// Keys per softmax tile (a tile may span blocks).
inline constexpr int kTile = 64;

// Which keys each query row of a call sees within its key range. A call
// holds `rows` queries of G heads each (a block of the extend kernel, or the
// one query of decode); visible(r, p): row r sees the key at position p. A
// key a row does not see scores -inf, which weighs exactly 0, so a row gets
// the same bits as when it runs alone over its own range (the kernel's last
// softmax chunk is padded with -inf for that reason). One type for decode,
// causal and tree queries: every path runs the same compiled kernel, so an
// optimiser cannot treat the arithmetic of one differently.
struct Visibility {
  std::int64_t first = 0;              // causal: row r sits at position first + r
  const std::uint8_t* mask = nullptr;  // or a token tree: row r is new token i0 + r of n,
  std::int64_t n = 0, i0 = 0;          // mask rows of n bytes over the new tokens,
  std::int64_t first_new = 0;          // and keys before first_new always seen
  bool operator()(int r, std::int64_t p) const {
    if (mask) return p < first_new || mask[(i0 + r) * n + (p - first_new)] != 0;
    return p <= first + r;
  }
  // Every row sees every key of [lo, hi): the kernel then skips the per-key
  // test (a decode query's keys, all but a causal block's last tile).
  bool all(std::int64_t hi) const { return mask ? hi <= first_new : hi - 1 <= first; }
  // The first position from lo on that row r may not see, for the kernel's
  // masking to start at: a causal row sees every key up to its own
  // position; a tree row's keys are each tested from lo.
  std::int64_t first_unseen(int r, std::int64_t lo) const { return mask ? lo : std::max(lo, first + r + 1); }
};

inline Visibility causal_rows(std::int64_t first) { return Visibility{first, nullptr, 0, 0, 0}; }
inline Visibility tree_rows(const std::uint8_t* mask, std::int64_t n, std::int64_t i0, std::int64_t first_new) {
  return Visibility{0, mask, n, i0, first_new};
}

// The scale that multiplies a finished dot product (K) or a softmax weight
// (V) of a row: Int8 and FP8 carry one per row; the widening of FP8 E4M3
// (via f16, see the kernels) leaves a factor 2^-8 that rides on it. F32,
// F16, BF16 have none; Int4 applies its scale and minimum per group while
// widening.
template <typename Quant>
struct RowScale {
  static constexpr bool kRowScale =
      std::is_same_v<Quant, kv::Int8> || std::is_same_v<Quant, kv::FP8E4M3> || std::is_same_v<Quant, kv::FP8E5M2>;
  static float scale(const float* p) {
    if constexpr (std::is_same_v<Quant, kv::FP8E4M3>)
      return p[0] * 256.0f;
    else if constexpr (kRowScale)
      return p[0];
    else
      return 1.0f;
  }
};

// log2 of the Int4 group a value belongs to, or 30 for one group per head
// (kv_quant.hpp: groups are 32 values or the whole head): a shift, not a
// division, finds a value's group in the inner loop.
template <typename Quant>
inline int group_shift(int head_dim) {
  return kv::QuantTraits<Quant>::group_size(head_dim) == 32 && head_dim > 32 ? 5 : 30;
}

}  // namespace fastinfer::cpu::attention_detail
