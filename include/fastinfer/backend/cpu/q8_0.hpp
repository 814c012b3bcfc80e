// Q8_0 weights (GGUF's 8-bit block format): the matrix kernels the backend
// calls, on the current CPU level (cpu_level.hpp).
//
//   q8_0_reference.hpp  block layouts and the scalar oracle
//   q8_0_avx2.hpp       AVX2 + FMA: maddubs with the sign trick, 4-row groups
//   q8_0_avx512.hpp     AVX-512 + VNNI: vpdpbusd, 4-row x 4-token register
//                       tiles over GGUF rows; 16-row x 8-token panels over
//                       regrouped rows
//   q8_0_amx.hpp        AMX-INT8: a TDPBSSD per block of 16 rows x 16 tokens
//   q8_0_grouped.hpp    the CPU backend's regrouped layout (levels avx512
//                       with VNNI, and amx): 16 rows' blocks side by side,
//                       for the tiles and vpdpbusd
//
// Results never depend on the thread count: threads split whole rows, and a
// row's sum has one fixed order: for GGUF rows one per level (the AVX-512
// tiles equal dot_avx2, not dot_rows_avx2, which the avx2 level runs;
// q8_0_avx512.hpp); for regrouped rows dot_blocks_fma_reference's at every
// level.
// The avx512 level on a CPU without AVX512-VNNI runs the AVX2 kernels; the
// amx level runs the AMX-INT8 tiles where the CPU has them (else avx512's);
// level scalar runs the reference.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/q8_0_amx.hpp"
#include "fastinfer/backend/cpu/q8_0_avx2.hpp"
#include "fastinfer/backend/cpu/q8_0_avx512.hpp"
#include "fastinfer/backend/cpu/q8_0_grouped.hpp"
#include "fastinfer/backend/cpu/q8_0_reference.hpp"
#include "fastinfer/backend/cpu/threading.hpp"
#include "fastinfer/core/aligned_buffer.hpp"

namespace fastinfer::cpu::q8_0 {

// The Q8_0 kernel set a level runs.
enum class KernelSet { reference, avx2, avx512_vnni, amx };
inline KernelSet kernel_set(CpuLevel level) {
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::amx && cpu_features().amx_int8) return KernelSet::amx;
  if (level >= CpuLevel::avx512 && cpu_features().avx512vnni) return KernelSet::avx512_vnni;
  if (level >= CpuLevel::avx2) return KernelSet::avx2;
#endif
  return KernelSet::reference;
}

// The Q8_0 kernels of a level (the current one by default), for logs and benchmarks.
inline const char* kernel_isa(CpuLevel level = cpu_level()) {
  switch (kernel_set(level)) {
    case KernelSet::amx:
      return "amx-int8";
    case KernelSet::avx512_vnni: return "avx512-vnni";
    case KernelSet::avx2: return "avx2";
    case KernelSet::reference: break;
  }
  return "scalar";
}

// Whether `set` has kernels for the regrouped layout (q8_0_grouped.hpp).
inline bool runs_grouped_kernels(KernelSet set) {
  return set == KernelSet::amx || set == KernelSet::avx512_vnni;
}

// Whether CpuBackend::upload regroups Q8_0 weights at `level`
// (q8_0_grouped.hpp): where the AMX-INT8 or AVX512-VNNI kernels run. A
// regrouped matrix keeps its layout, so it computes the same bits at any
// later level (below those with the scalar reference: set the level before
// loading).
inline bool regroups_weights(CpuLevel level = cpu_level()) { return runs_grouped_kernels(kernel_set(level)); }

// A copy of the Q8_0 rows `w` in the regrouped layout, in `storage` (64-byte
// aligned, huge pages where the kernel grants them), regrouped on up to
// `threads` threads.
inline MatrixView regroup_matrix(const MatrixView& w, std::shared_ptr<std::uint8_t>& storage,
                                 int threads = 1) {
  detail::check_matrix(w);
  FASTINFER_CHECK(w.layout == MatrixLayout::rows, InvalidArgument,
                  "q8_0::regroup_matrix: the matrix is regrouped already");
  const std::int64_t groups = groups_of(w.rows);
  storage =
      fastinfer::detail::aligned_buffer(std::size_t(groups * (w.cols / kBlockSize)) * sizeof(GroupBlock));
  auto* out = reinterpret_cast<GroupBlock*>(storage.get());
  parallel_ranges(groups, 1, threads_for(std::int64_t(w.bytes()), 1 << 20, threads),
                  [&](std::int64_t g0, std::int64_t g1) { regroup(w, out, g0, g1); });
  return regrouped_view(w, storage.get());
}

// The dot product of one row with the kernels of `set`.
inline float dot(KernelSet set, const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
  switch (set) {
#if FASTINFER_CPU_DISPATCH
    case KernelSet::amx:
      return dot_blocks_fma_reference(w_row, x, n_blocks);  // the tiles' order, one row
    case KernelSet::avx512_vnni: return avx512::dot(w_row, x, n_blocks);
    case KernelSet::avx2: return dot_avx2(w_row, x, n_blocks);
#endif
    default: return dot_reference(w_row, x, n_blocks);
  }
}
// ... with the kernels of the current level.
inline float dot(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
  return dot(kernel_set(cpu_level()), w_row, x, n_blocks);
}

namespace detail {
// Per-thread scratch for the quantized activations (Block: ActivationBlock,
// or OffsetActivationBlock for the grouped vpdpbusd kernels), grown once and
// reused so that a decode step allocates nothing.
template <class Block>
inline Block* activation_scratch(std::size_t blocks) {
  thread_local std::vector<Block> scratch;
  if (scratch.size() < blocks) scratch.resize(blocks);
  return scratch.data();
}
// Below this many weight bytes an OpenMP hand-off costs more than it saves.
inline constexpr std::int64_t kMinBytesPerThread = 64 * 1024;

// quantize_activation of n tokens of `cols` values, with the level's kernel
// (the same bits at every level).
inline void quantize_activations(KernelSet set, const float* x, std::int64_t n, std::int64_t cols,
                                 ActivationBlock* xq) {
  for (std::int64_t t = 0; t < n; ++t) {
#if FASTINFER_CPU_DISPATCH
    if (set != KernelSet::reference) {
      quantize_activation_avx2(x + t * cols, xq + t * (cols / kBlockSize), cols);
      continue;
    }
#endif
    quantize_activation(x + t * cols, xq + t * (cols / kBlockSize), cols);
  }
}

// Rows [begin, end) of Y for n tokens whose activations are already
// quantized, with the kernels of `set`.
inline void matmul_rows(KernelSet set, const MatrixView& w, const ActivationBlock* xq, std::int64_t n, float* y,
                        std::int64_t begin, std::int64_t end) {
#if FASTINFER_CPU_DISPATCH
  if (set == KernelSet::avx512_vnni) return avx512::matmul_rows(w, xq, n, y, begin, end);
#endif
  const std::int64_t nb = w.cols / kBlockSize, rows = w.rows;
  for (std::int64_t r0 = begin; r0 < end; r0 += 4) {
    for (std::int64_t t = 0; t < n; ++t) {
#if FASTINFER_CPU_DISPATCH
      if (set == KernelSet::avx2 && r0 + 4 <= end) {
        const std::size_t stride = row_bytes(DType::Q8_0, w.cols);
        float out[4];
        if (n > 1) {
          dot_rows_avx2<4>(static_cast<const std::uint8_t*>(w.row_ptr(r0)), stride, xq + t * nb, nb, out);
        } else {
          for (int i = 0; i < 4; ++i)
            dot_rows_avx2<1>(static_cast<const std::uint8_t*>(w.row_ptr(r0 + i)), stride, xq, nb, out + i);
        }
        for (int i = 0; i < 4; ++i) y[t * rows + r0 + i] = out[i];
        continue;
      }
#endif
      for (std::int64_t r = r0; r < std::min(end, r0 + 4); ++r) y[t * rows + r] = dot(set, w.row_ptr(r), xq + t * nb, nb);
    }
  }
}
}  // namespace detail

// n tokens: Y[t][r] = sum_c W[r][c] X[t][c]. Each token's activations are
// quantized once; up to `threads` threads split the rows in groups of 4.
inline void matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads = 1) {
  detail::check_matrix(w);
  const std::int64_t nb = w.cols / kBlockSize;
  ActivationBlock* xq = detail::activation_scratch<ActivationBlock>(std::size_t(nb * n));
  const KernelSet set = kernel_set(cpu_level());  // once, before the threads start
  detail::quantize_activations(set, x, n, w.cols, xq);
  const int nt = threads_for(std::int64_t(w.bytes()) * n, detail::kMinBytesPerThread, threads);
  if (w.layout == MatrixLayout::q8_0_row_groups) {
#if FASTINFER_CPU_AVX512_TILES
    if (set == KernelSet::amx && n > avx512::kGroupedTokens) return amx_grouped_matmul(w, xq, n, y, nt);
#endif
#if FASTINFER_CPU_Q8_0_AVX512
    if (runs_grouped_kernels(set)) {
      OffsetActivationBlock* xo = detail::activation_scratch<OffsetActivationBlock>(std::size_t(nb * n));
      offset_activations(xq, nb * n, xo);
      return parallel_ranges(w.rows, kGroupRows, nt, [&](std::int64_t begin, std::int64_t end) {
        avx512::grouped_matmul_rows(w, xo, n, y, begin, end);
      });
    }
#endif
    return parallel_ranges(w.rows, 1, nt, [&](std::int64_t begin, std::int64_t end) {
      grouped_rows_reference(w, xq, n, y, begin, end);
    });
  }
#if FASTINFER_CPU_AVX512_TILES
  if (set == KernelSet::amx) return amx_matmul(w, xq, n, y, nt);
#endif
  parallel_ranges(w.rows, 4, nt, [&](std::int64_t begin, std::int64_t end) {
    detail::matmul_rows(set, w, xq, n, y, begin, end);
  });
}

inline void matvec(const MatrixView& w, const float* x, float* y, int threads = 1) {
  matmul(w, x, 1, y, threads);
}

}  // namespace fastinfer::cpu::q8_0
