// Q8_0 weights regrouped for the AMX-INT8 tiles and vpdpbusd: the CPU
// backend's own layout (MatrixLayout::q8_0_row_groups), made once when a
// model's weights are uploaded at level amx, or avx512 on a CPU with
// AVX512-VNNI (CpuBackend::upload), and its scalar references.
//
// Why regroup: a tile multiply wants block b of 16 rows as one 512-byte tile
// in the 4-byte groups TDPBSSD reads, and their 16 scales as one vector; a
// vpdpbusd wants 4 quants of each of 16 rows in one register. Read in place
// from GGUF rows, block b of 16 rows is 16 loads a row stride apart and its
// scales a gather; decode then streamed ~19 GB/s of a ~30 GB/s ceiling (and
// the avx512 level's row-at-a-time vpdpbusd, 34-byte blocks at odd offsets,
// 0.4x the regrouped kernel's speed on the same Xeon). Regrouped, a group of 16 rows is one contiguous stream
// of
//
//   GroupBlock b = { the 16 rows' f16 scales of block b,
//                    quants[q][r][0..3] = quants 4q .. 4q + 3 of row r's block b }
//
// the same 34 bytes per row and block as GGUF (plus zero rows padding the last
// group to 16). The model's view then points at the copy: the rows it came
// from are no longer read.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastinfer/backend/cpu/q8_0_reference.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu::q8_0 {

inline constexpr std::int64_t kGroupRows = kQ8_0GroupRows;

struct GroupBlock {
  std::uint16_t scales[kGroupRows];                   // f16 d_w of each row
  std::int8_t quants[kBlockSize / 4][kGroupRows][4];  // [4-quant group][row][quant]
};
static_assert(sizeof(GroupBlock) == kGroupRows * sizeof(Block),
              "a regrouped Q8_0 block of 16 rows holds exactly their 16 GGUF blocks' bytes");

// A quantized activation block as vpdpbusd's unsigned operand: each quant
// plus 128 (x ^ 0x80 as a byte is x + 128 for every int8 x), four to a
// 32-bit group, which the grouped kernels broadcast from memory. Made once
// per pass (offset_activations); the kernels take 128 * sum(w) off again.
struct OffsetActivationBlock {
  float d;
  std::uint32_t quads[kBlockSize / 4];
};
static_assert(sizeof(OffsetActivationBlock) == sizeof(ActivationBlock),
              "an offset activation block holds its block's scale and 32 quants, nothing more");

inline void offset_activations(const ActivationBlock* x, std::int64_t count, OffsetActivationBlock* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    out[i].d = x[i].d;
    std::memcpy(out[i].quads, x[i].qs, sizeof out[i].quads);
    for (std::uint32_t& quad : out[i].quads) quad ^= 0x80808080u;
  }
}

inline std::int64_t groups_of(std::int64_t rows) { return (rows + kGroupRows - 1) / kGroupRows; }

// Block b of group g of a regrouped matrix.
inline const GroupBlock* group_blocks(const MatrixView& w, std::int64_t g) {
  return static_cast<const GroupBlock*>(w.data) + g * (w.cols / kBlockSize);
}

// Groups [g0, g1) of the Q8_0 rows `w` into `out` (the whole regrouped
// matrix: groups_of(w.rows) * w.cols / 32 GroupBlocks).
inline void regroup(const MatrixView& w, GroupBlock* out, std::int64_t g0, std::int64_t g1) {
  const std::int64_t blocks = w.cols / kBlockSize;
  for (std::int64_t g = g0; g < g1; ++g) {
    GroupBlock* o = out + g * blocks;
    std::memset(o, 0, sizeof(GroupBlock) * std::size_t(blocks));  // padding rows: scale 0, quants 0
    for (std::int64_t r = 0; r < std::min(kGroupRows, w.rows - g * kGroupRows); ++r) {
      const auto* row = reinterpret_cast<const Block*>(w.row_ptr(g * kGroupRows + r));
      for (std::int64_t b = 0; b < blocks; ++b) {
        o[b].scales[r] = row[b].d;
        for (int q = 0; q < kBlockSize / 4; ++q) std::memcpy(o[b].quants[q][r], row[b].qs + 4 * q, 4);
      }
    }
  }
}

// The view of a regrouped copy of `w` at `data`.
inline MatrixView regrouped_view(const MatrixView& w, const void* data) {
  return MatrixView{DType::Q8_0, data, w.rows, w.cols, MatrixLayout::q8_0_row_groups};
}

// Row r of a regrouped matrix back in GGUF's row format (34 bytes a block).
inline void ungroup_row(const MatrixView& w, std::int64_t r, void* dst) {
  const GroupBlock* gb = group_blocks(w, r / kGroupRows);
  const std::int64_t lane = r % kGroupRows;
  auto* out = static_cast<Block*>(dst);
  for (std::int64_t b = 0; b < w.cols / kBlockSize; ++b) {
    out[b].d = gb[b].scales[lane];
    for (int q = 0; q < kBlockSize / 4; ++q) std::memcpy(out[b].qs + 4 * q, gb[b].quants[q][lane], 4);
  }
}

// The kernels stream a group's blocks; the hardware prefetchers follow the
// stream too late at decode (544 bytes go through vpdpbusd or a tile in a few
// dozen cycles): the blocks `distance` ahead of `at` are prefetched, 4 for
// vpdpbusd and 8 for the tiles, the best of 0, 2, 4, 8 and 16 on the Xeon that
// measured them (1-token tiles 20 -> 24 GB/s; 1-token vpdpbusd 19 -> 24 GB/s).
inline constexpr std::int64_t kPrefetchBlocksVnni = 4, kPrefetchBlocksTiles = 8;
inline void prefetch_ahead(const GroupBlock* at, int blocks, std::int64_t distance) {
  const char* p = reinterpret_cast<const char*>(at + distance);
  for (std::size_t off = 0; off < std::size_t(blocks) * sizeof(GroupBlock); off += 64)
    __builtin_prefetch(p + off, 0, 3);
}

// dst = row r of a regrouped matrix, dequantized (an embedding lookup).
inline void load_grouped_row(const MatrixView& w, std::int64_t r, float* dst) {
  thread_local std::vector<Block> row;
  row.resize(std::size_t(w.cols / kBlockSize));
  ungroup_row(w, r, row.data());
  reference::load_row(DType::Q8_0, row.data(), dst, w.cols);
}

// Rows [begin, end) of Y = X W^T for a regrouped W and n quantized tokens xq
// ([n][blocks]) in the grouped kernels' order (dot_blocks_fma_reference, each
// row ungrouped once for all tokens): their oracle, and what a regrouped
// matrix computes at a level without them.
inline void grouped_rows_reference(const MatrixView& w, const ActivationBlock* xq, std::int64_t n, float* y,
                                   std::int64_t begin, std::int64_t end) {
  const std::int64_t blocks = w.cols / kBlockSize;
  thread_local std::vector<Block> row;
  row.resize(std::size_t(blocks));
  for (std::int64_t r = begin; r < end; ++r) {
    ungroup_row(w, r, row.data());
    for (std::int64_t t = 0; t < n; ++t)
      y[t * w.rows + r] = dot_blocks_fma_reference(row.data(), xq + t * blocks, blocks);
  }
}

}  // namespace fastinfer::cpu::q8_0
