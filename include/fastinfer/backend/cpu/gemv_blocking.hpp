// How the small-row matmul (1..32 activation rows: the verify pass and
// batched decode) walks a weight matrix, shared by the per-ISA tile sets
// (gemv_avx2.hpp, gemv_avx512.hpp, gemv_avx512_bf16.hpp). A tile set is a
// struct with
//
//   using Activation                           an activation's element type
//                                              (float; std::uint16_t for
//                                              bf16 activations)
//   static constexpr int kMaxTileTokens        most activation rows per tile
//   static constexpr std::int64_t kBlockRows   weight rows per block
//   template <int T> static constexpr int kTileRows
//                                              weight rows per tile of T
//                                              activation rows (divides
//                                              kBlockRows)
//   template <DType D>
//   static bool stream_one_row(std::size_t row_bytes)
//                                              true: a pass of one activation
//                                              row reads a weight row at a
//                                              time; false: in tiles of
//                                              kTileRows<1> rows (below)
//   template <DType D, int R, int T, bool Prefetch>
//   static void tile(w, stride, x, ldx, cols, y, ldy, ahead)
//                                              R weight rows x T activation
//                                              rows of sums, every one in the
//                                              set's one documented order;
//                                              with Prefetch, `ahead`'s lines
//                                              pulled into L2 on the way
//
// The walk: blocks of kBlockRows weight rows; over each block, the activation
// rows in as few groups of at most kMaxTileTokens as there can be, their
// sizes within one of each other (8 rows: 4 + 4, not 6 + 2, whose 2-row
// tiles load a weight vector for every 2 FMAs; Intel Xeon, AVX-512, 2
// threads, the 1B stand-in's bf16 matrices: 129-131 -> 120-122 ms). The first
// group streams the block from memory, the later ones find it in L1/L2: the
// pass reads each weight from memory once, and each weight vector is loaded
// (and bf16/f16 widened) once per group instead of once per activation row.
// No thread or tile shape changes a sum's order, so the bits of a row do not
// depend on the pass.
//
// How memory is read. With one activation row, one weight row at a time
// (stream_one_row): memory sees one sequential stream, which the hardware
// prefetchers follow at full speed; a tile of R rows reads R short streams
// (one row each, 1.5-4 KiB) side by side, which they did not (Zen 4, one
// thread, the 110M bf16 matrices: a one-row pass 19.4 ms in 4-row tiles,
// 10.5-12.8 ms a row at a time, when each tile prefetched only its own next
// rows). But a row at a time is one FMA chain: every chunk's FMA waits for
// the one before (4 cycles), and an 8-lane chain widening bf16/f16 cannot
// keep up with memory. A tile set whose one-row pass is bound by that
// chain walks it in tiles of kTileRows<1> rows (independent chains) with
// the next-block prefetch below (Intel Xeon, avx2 level, 2 threads, a
// scratch one-row pass over every matrix: 110M bf16 16.2 -> 11.2-11.6 ms,
// 1B bf16 134-142 -> 75-78, 1B f16 110-125 -> 74-75; f32 there is bound by
// memory, and in tiles 9-19 % slower).
// With more activation rows the tiles over a block also prefetch the NEXT
// block into L2 (the block's rows are contiguous: one sequential stream of
// kBlockRows rows), its lines spread evenly over their column chunks, so the
// next block's reads overlap this block's FMAs, and every tile finds its
// weights in L2. Every group over the block takes a share of those lines in
// proportion to its activation rows: when only the first group prefetched,
// memory stood idle while the later ones computed (Intel Xeon with AVX-512,
// 2 threads, every bf16 matrix of the 1B stand-in: 16 rows 211 -> 182 ms, 8
// rows 142 -> 130, one row 86). Before, each tile prefetched the next
// tile's R rows into L1 and the reads did not overlap the FMAs: a pass cost
// the stream plus the FMAs (110M bf16, 2 threads, 8 rows: 13 ms against
// 5.2 ms for one row and 7.4 ms of FMAs at this kernel's in-cache rate).
// Measured on Zen 4 (a 215 MB bf16 matrix, 8 rows, 2 threads): 12.8-13.9 ms
// with the next tile prefetched, 9.4 with the next block (T1 and T2 hints
// alike; into L1 (T0), 11-13.5).
//
// On AMD Zen 4, whose weights stream from memory, the tiles' prefetch costs
// short rows more than the extra chains give them: there rows under 8 KiB
// go a row at a time (one_row_walk.hpp has the figures).
//
// Std-only and free of intrinsics (a prefetch is GCC's builtin): the tiles
// are compiled in their ISA's target region (cpu_target.hpp) and called out
// of line.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu::gemv_detail {

// Cache lines [begin, begin + 64 lines) for a tile to prefetch while it
// computes. An integer, not a pointer: the span may run past the matrix.
struct PrefetchSpan {
  std::uintptr_t begin = 0;
  std::int64_t lines = 0;
};

// Issues a span's prefetches into L2 evenly over a tile's `chunks` column
// steps: step() once per chunk, finish() after the last (rows shorter than a
// chunk issue them all there). A Bresenham count: no division in the loop.
class PrefetchPacer {
 public:
  PrefetchPacer(PrefetchSpan span, std::int64_t chunks) : span_(span), chunks_(chunks) {}
  void step() {
    for (owed_ += span_.lines; owed_ >= chunks_; owed_ -= chunks_) issue();
  }
  void finish() {
    while (issued_ < span_.lines) issue();
  }

 private:
  void issue() {
#if defined(__GNUC__) || defined(__clang__)
    // Read, locality 2: prefetcht1 on x86 (into L2).
    __builtin_prefetch(reinterpret_cast<const void*>(span_.begin + std::uintptr_t(issued_) * 64), 0, 2);
#endif
    ++issued_;
  }

  PrefetchSpan span_;
  std::int64_t chunks_, issued_ = 0, owed_ = 0;
};

// Rows [0, m) of one block (weight rows from `base`) for T activation rows.
// The tiles prefetch `next` (this group's share of the next block's bytes,
// empty after the last block), a share each.
template <class Tiles, DType D, int T>
inline void block_rows(const std::uint8_t* base, std::size_t stride, std::int64_t m,
                       const typename Tiles::Activation* x, std::int64_t k, float* y, std::int64_t ldy,
                       PrefetchSpan next) {
  constexpr int R = Tiles::template kTileRows<T>;
  const std::int64_t tiles = m / R;
  const std::int64_t share = tiles > 0 ? (next.lines + tiles - 1) / tiles : 0;
  std::int64_t r = 0;
  for (std::int64_t i = 0; r + R <= m; r += R, ++i) {
    const std::int64_t from = std::min(next.lines, i * share);
    const PrefetchSpan mine{next.begin + std::uintptr_t(from) * 64, std::min(share, next.lines - from)};
    Tiles::template tile<D, R, T, true>(base + r * stride, stride, x, k, k, y + r, ldy, mine);
  }
  for (; r < m; ++r) Tiles::template tile<D, 1, T, false>(base + r * stride, stride, x, k, k, y + r, ldy, {});
}

// The rows of one block for a group of n (1..kMaxTileTokens) activation rows
// (T counts down to the n that is there).
template <class Tiles, DType D, int T = Tiles::kMaxTileTokens>
inline void block_rows_group(std::int64_t n, const std::uint8_t* base, std::size_t stride, std::int64_t m,
                             const typename Tiles::Activation* x, std::int64_t k, float* y, std::int64_t ldy,
                             PrefetchSpan next) {
  if constexpr (T >= 1) {
    if (n == T) return block_rows<Tiles, D, T>(base, stride, m, x, k, y, ldy, next);
    return block_rows_group<Tiles, D, T - 1>(n, base, stride, m, x, k, y, ldy, next);
  }
}

// Rows [r0, r1) of Y = X W^T for n activation rows (X [n][w.cols], Y
// [n][w.rows]).
template <class Tiles, DType D>
inline void blocked_matmul_rows(const MatrixView& w, const typename Tiles::Activation* x, std::int64_t n,
                                float* y, std::int64_t r0, std::int64_t r1) {
  constexpr int G = Tiles::kMaxTileTokens;
  const std::int64_t k = w.cols, ldy = w.rows;
  const std::size_t stride = row_bytes(w.dtype, k);
  for (std::int64_t b0 = r0; b0 < r1; b0 += Tiles::kBlockRows) {
    const std::int64_t m = std::min(Tiles::kBlockRows, r1 - b0);
    const std::uint8_t* base = w.row_ptr(b0);
    // The next block of this range (rows are contiguous), for the tiles to
    // prefetch.
    const std::int64_t next_rows = std::min(Tiles::kBlockRows, r1 - b0 - m);
    const PrefetchSpan next{reinterpret_cast<std::uintptr_t>(base) + std::uintptr_t(m) * stride,
                            std::int64_t((std::size_t(next_rows) * stride + 63) / 64)};
    // The lines of `next` that the group of activation rows [t0, t1)
    // prefetches.
    auto group_share = [&](std::int64_t t0, std::int64_t t1) {
      const std::int64_t l0 = next.lines * t0 / n, l1 = next.lines * t1 / n;
      return PrefetchSpan{next.begin + std::uintptr_t(l0) * 64, l1 - l0};
    };
    const std::int64_t groups = (n + G - 1) / G;
    for (std::int64_t g = 0, t = 0; g < groups; ++g) {
      const std::int64_t size = n / groups + (g < n % groups ? 1 : 0);
      block_rows_group<Tiles, D>(size, base, stride, m, x + t * k, k, y + t * ldy + b0, ldy,
                                 group_share(t, t + size));
      t += size;
    }
  }
}

// Rows [begin, end) of y = W x, the one-row pass: a weight row at a time,
// one sequential stream, or in tiles (the tile set's stream_one_row, above);
// the same sums as blocked_matmul_rows gives a row.
template <class Tiles, DType D>
inline void one_row_matvec_rows(const MatrixView& w, const typename Tiles::Activation* x, float* y,
                                std::int64_t begin, std::int64_t end) {
  const std::size_t stride = row_bytes(w.dtype, w.cols);
  if (!Tiles::template stream_one_row<D>(stride))
    return blocked_matmul_rows<Tiles, D>(w, x, 1, y, begin, end);
  for (std::int64_t r = begin; r < end; ++r)
    Tiles::template tile<D, 1, 1, false>(w.row_ptr(r), stride, x, 0, w.cols, y + r, 0, {});
}

}  // namespace fastinfer::cpu::gemv_detail
