// What the per-ISA attention kernels (attention_avx2.hpp, attention_avx512.hpp)
// share and that needs no vector instructions: the running softmax state of
// a group of query heads, which keys a query sees, and the per-row scale of
// each KV format. Kept out of the target regions, so both kernel sets and the
// driver (attention.hpp) use one definition.
#pragma once

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

struct AllVisible {
  static constexpr bool kAll = true;
  bool operator()(std::int64_t) const { return true; }
};
struct MaskVisible {
  static constexpr bool kAll = false;
  const std::uint8_t* row;  // mask row of this query over the new tokens
  std::int64_t first_new;
  bool operator()(std::int64_t p) const { return p < first_new || row[p - first_new] != 0; }
};

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
