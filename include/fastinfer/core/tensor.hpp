// Non-owning views of weight matrices and vectors, and the keep-alive handle
// that owns what they point into (a memory map or a heap buffer).
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "fastinfer/core/dtype.hpp"

namespace fastinfer {

// Bytes that a row of `cols` elements of `dtype` occupies. Q8_0 packs blocks of
// 32 values as one f16 scale and 32 int8 quants (34 bytes), as in GGUF.
constexpr std::size_t row_bytes(DType dtype, std::int64_t cols) {
  switch (dtype) {
    case DType::F32: return std::size_t(cols) * 4;
    case DType::F16:
    case DType::BF16: return std::size_t(cols) * 2;
    case DType::Q8_0: return std::size_t(cols / 32) * 34;
  }
  return 0;
}

// How a matrix's bytes are laid out.
//   rows             row after row, each in its dtype's row format: every file
//                    format, and what every kernel reads
//   q8_0_row_groups  Q8_0 regrouped by the CPU backend for its AVX512-VNNI
//                    and AMX-INT8 kernels (backend/cpu/q8_0_grouped.hpp):
//                    16 rows' blocks side by side, the last group
//                    zero-padded. Only the CPU backend's kernels and
//                    cpu::load_matrix_row read it; row_ptr does not apply.
//   q8_0_split_rows  Q8_0 on the CUDA backend's device (backend/cuda/
//                    dtype.cuh): each row its quants, then its scales, in
//                    the row's row_bytes. Only the CUDA kernels read it.
enum class MatrixLayout : std::uint8_t { rows, q8_0_row_groups, q8_0_split_rows };
inline constexpr std::int64_t kQ8_0GroupRows = 16;

// A row-major matrix [rows][cols] of `dtype` elements. For a linear layer the
// rows are output features: y[r] = sum_c W[r][c] * x[c] (llama2.c, GGUF and
// Hugging Face all store weights this way).
struct MatrixView {
  DType dtype = DType::F32;
  const void* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  MatrixLayout layout = MatrixLayout::rows;

  // The bytes at `data` (a grouped matrix's padding rows included; split
  // rows keep their row_bytes, so that layout pads nothing).
  std::size_t bytes() const {
    const std::int64_t stored = layout == MatrixLayout::q8_0_row_groups
                                    ? (rows + kQ8_0GroupRows - 1) / kQ8_0GroupRows * kQ8_0GroupRows
                                    : rows;
    return row_bytes(dtype, cols) * std::size_t(stored);
  }
  // Row r of a matrix in the `rows` layout.
  const std::uint8_t* row_ptr(std::int64_t r) const {
    assert(layout == MatrixLayout::rows &&
           "row_ptr of a regrouped matrix: read it with cpu::load_matrix_row");
    return static_cast<const std::uint8_t*>(data) + row_bytes(dtype, cols) * std::size_t(r);
  }
};

// Type-erased owner of the memory behind views (shared so that a model and a
// copy of its weights can outlive the loader).
using KeepAlive = std::shared_ptr<const void>;

}  // namespace fastinfer
