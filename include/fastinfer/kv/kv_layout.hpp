// Where a sequence's KV tokens live: the layout policies of KVCache.
//
//   Contiguous                       one block per sequence holding its whole
//                                    maximum length (reserved up front): the
//                                    classic per-request buffer.
//   Paged<BlockSize>                 block tables over a PagedAllocator
//                                    (vLLM's PagedAttention).
//   SlidingWindow<Window, Sinks, BS> Paged, attending to the first Sinks
//                                    tokens and the last Window (StreamingLLM);
//                                    blocks that fall wholly out of the window
//                                    go back to the pool, never overwritten.
//
// A template argument of 0 means "taken from KVCacheConfig at run time", so a
// command-line flag can choose the block size without a compile-time
// dispatch over every value.
//
// Contiguous is Paged with one block per sequence: the kernels, the view and
// fork/copy-on-write are the same code, and "paged vs contiguous" compares
// exactly the cost of the block indirection. The allocator wants a power-of-
// two block, so the reservation is max_seq_len rounded up to a power of two.
//
// Positions with sinks (StreamingLLM): keys are stored rotated by RoPE at
// their true position, as a model without a window would store them. When
// the window has moved past the sinks by `offset = P + 1 - Window - Sinks`
// tokens, StreamingLLM renumbers the cache: sinks keep 0..S-1 and the window
// follows at S.., the query at S+W-1. RoPE scores depend only on position
// differences, so window keys need nothing; for the sink keys the kernel
// rotates the *query* back by `offset` (once per query and head, not per key).
// The result equals attention with StreamingLLM positions exactly, with no
// re-rotation of stored keys and no un-rotated key cache. RopeSpec tells the
// kernel how the model rotates.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_quant.hpp"

namespace fastinfer {

// The layouts by name, for what chooses one at run time (--kv-layout,
// KVOptions, kv::RuntimeLayout).
enum class KVLayoutKind { Contiguous, Paged, Window };

constexpr std::string_view kv_layout_name(KVLayoutKind k) {
  switch (k) {
    case KVLayoutKind::Contiguous: return "contiguous";
    case KVLayoutKind::Paged: return "paged";
    case KVLayoutKind::Window: return "window";
  }
  return "?";
}

// "paged" -> KVLayoutKind::Paged (the spelling of --kv-layout).
inline KVLayoutKind parse_kv_layout(std::string_view name) {
  for (KVLayoutKind k : {KVLayoutKind::Contiguous, KVLayoutKind::Paged, KVLayoutKind::Window})
    if (kv_layout_name(k) == name) return k;
  throw_error<InvalidArgument>("unknown KV layout '", name, "': expected contiguous, paged or window");
}

namespace kv {

// How the model applies RoPE (mirrors model::RopeStyle without depending on
// the model layer): pairs (2i, 2i+1) or, with half_split, (i, i + d/2).
struct RopeSpec {
  float theta = 10000.0f;
  bool half_split = false;
};

struct Contiguous {};
template <int BlockSize = 16>
struct Paged {};
template <int Window = 0, int Sinks = 0, int BlockSize = 16>
struct SlidingWindow {};
// The layout KVCacheConfig::layout names at run time, with the block size,
// window and sinks from the config: what a program whose layout is a flag
// compiles (one KVCache per quantization instead of one per layout and
// quantization). The same code as the tags above, chosen by a branch.
struct RuntimeLayout {};

inline constexpr bool is_power_of_two(std::int64_t v) { return v > 0 && (v & (v - 1)) == 0; }
inline std::int32_t next_power_of_two(std::int64_t v) {
  // 2^30 is the largest power of two an int32 holds: past it the result
  // would narrow to a negative "block size".
  FASTINFER_CHECK(v <= (std::int64_t(1) << 30), InvalidArgument, "next_power_of_two: ", v,
                  " exceeds the largest 32-bit power of two (2^30)");
  std::int64_t p = 1;
  while (p < v) p <<= 1;
  return std::int32_t(p);
}

template <typename Layout>
struct LayoutTraits {
  static_assert(kDependentFalse<Layout>,
                "unknown KV layout: use kv::Contiguous, kv::Paged<BlockSize> or kv::SlidingWindow<Window, Sinks>");
};

template <>
struct LayoutTraits<Contiguous> {
  static constexpr bool kRuntime = false;
  static constexpr KVLayoutKind kKind = KVLayoutKind::Contiguous;
  static constexpr int kBlockSize = 0;
  static constexpr int kWindow = 0;
  static constexpr int kSinks = 0;
};

template <int BlockSize>
struct LayoutTraits<Paged<BlockSize>> {
  static_assert(BlockSize == 0 || is_power_of_two(BlockSize), "Paged<BlockSize>: the block size must be a power of two");
  static constexpr bool kRuntime = false;
  static constexpr KVLayoutKind kKind = KVLayoutKind::Paged;
  static constexpr int kBlockSize = BlockSize;
  static constexpr int kWindow = 0;
  static constexpr int kSinks = 0;
};

template <int Window, int Sinks, int BlockSize>
struct LayoutTraits<SlidingWindow<Window, Sinks, BlockSize>> {
  static_assert(BlockSize == 0 || is_power_of_two(BlockSize),
                "SlidingWindow<Window, Sinks, BlockSize>: the block size must be a power of two");
  static_assert(Window >= 0 && Sinks >= 0, "SlidingWindow<Window, Sinks>: sizes cannot be negative");
  static constexpr bool kRuntime = false;
  static constexpr KVLayoutKind kKind = KVLayoutKind::Window;
  static constexpr int kBlockSize = BlockSize;
  static constexpr int kWindow = Window;  // 0: KVCacheConfig::window
  static constexpr int kSinks = Sinks;    // 0 with Window 0: KVCacheConfig::sinks
};

// Everything from KVCacheConfig (layout, block_size, window, sinks).
template <>
struct LayoutTraits<RuntimeLayout> {
  static constexpr bool kRuntime = true;
  static constexpr int kBlockSize = 0;
  static constexpr int kWindow = 0;
  static constexpr int kSinks = 0;
};

}  // namespace kv
}  // namespace fastinfer
