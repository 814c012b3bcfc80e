// How a one-row pass (decode) reads bf16/f16 weights with the avx512 tile
// set's widening tiles (gemv_avx512.hpp; levels avx512 and amx): a kernel
// mode (kernel_mode.hpp). The walks give the same bits: only the order the
// rows are read in differs. (The avx2 set takes bf16/f16 in tiles on every
// CPU: at the avx2 level 8-lane chains fall behind even on Zen 4, whose
// scratch one-row pass ran 4.4-6.3 ms in tiles, 6.1-6.4 a row at a time.)
//
//   tiles      every matrix in 4-row tiles with the next-block prefetch:
//              four FMA chains side by side. Best where one chain falls
//              behind the weights: on an Intel Xeon (2 threads, avx512) the
//              110M bf16 forward pass 7.7-8.5 -> 4.9-5.7 ms, its weights
//              mostly in the 480 MB L3; the 1B one 2-5 % faster from DRAM.
//   by_length  rows shorter than kLongRowBytes a row at a time with no
//              software prefetch, longer ones in tiles. Best on AMD Zen 4
//              (32 MB L3, 2 threads, scratch one-row passes over the
//              stand-ins' bf16 matrices): its prefetchers follow one stream
//              at full speed, and the prefetch instructions cost rows of
//              1.5-4 KiB 7-14 % (110M all 5.9-6.4 ms a row at a time, 6.6-7.2
//              in tiles; 1B gate/up 29-31 against 31-33) while rows of 11 KiB
//              gain from them (1B down 18-24 -> 16-18).
//
// Default: by_length on AMD CPUs (CPUID vendor "AuthenticAMD"), tiles on the
// others. FASTINFER_ONE_ROW_WALK=tiles|by-length sets the starting mode;
// set_one_row_walk / OneRowWalkScope change it for later calls.
#pragma once

#include <cstddef>
#include <string_view>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/kernel_mode.hpp"
#include "fastinfer/core/error.hpp"

namespace fastinfer::cpu {

enum class OneRowWalk : int { tiles = 0, by_length = 1 };

// Rows of at least this many bytes go in tiles in the by_length walk (the
// 1B stand-in's 4 KiB rows stream a row at a time, its 11 KiB ones in tiles).
inline constexpr std::size_t kLongRowBytes = std::size_t(8) << 10;

inline const char* one_row_walk_name(OneRowWalk walk) {
  return walk == OneRowWalk::by_length ? "by-length" : "tiles";
}

inline OneRowWalk parse_one_row_walk(std::string_view text, std::string_view source) {
  static const ModeName<OneRowWalk> kNames[] = {
      {OneRowWalk::tiles, one_row_walk_name(OneRowWalk::tiles)},
      {OneRowWalk::by_length, one_row_walk_name(OneRowWalk::by_length)}};
  return parse_mode(text, source, "one-row walk", kNames);
}

namespace one_row_walk_detail {
inline OneRowWalk initial_walk() {
  if (const char* env = mode_variable("FASTINFER_ONE_ROW_WALK"))
    return parse_one_row_walk(env, "FASTINFER_ONE_ROW_WALK");
  return cpu_features().amd ? OneRowWalk::by_length : OneRowWalk::tiles;
}
using Mode = KernelMode<OneRowWalk, initial_walk>;
}  // namespace one_row_walk_detail

inline OneRowWalk one_row_walk() { return one_row_walk_detail::Mode::get(); }

// Whether a one-row pass over rows of `row_bytes` goes in tiles (where the
// tile set allows it).
inline bool one_row_in_tiles(std::size_t row_bytes) {
  return one_row_walk() == OneRowWalk::tiles || row_bytes >= kLongRowBytes;
}

inline void set_one_row_walk(OneRowWalk walk) {
  FASTINFER_CHECK(walk == OneRowWalk::tiles || walk == OneRowWalk::by_length, InvalidArgument,
                  "set_one_row_walk: ", int(walk), " is not a one-row walk");
  one_row_walk_detail::Mode::store(walk);
}

// Sets a walk for a scope (a test, a benchmark), then restores the previous one.
class OneRowWalkScope : public one_row_walk_detail::Mode::Scope {
 public:
  explicit OneRowWalkScope(OneRowWalk walk) : Scope(walk, set_one_row_walk) {}
};

}  // namespace fastinfer::cpu
