// Non-owning views of weight matrices and vectors, and the keep-alive handle
// that owns what they point into (a memory map or a heap buffer).
#pragma once

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

// A row-major matrix [rows][cols] of `dtype` elements. For a linear layer the
// rows are output features: y[r] = sum_c W[r][c] * x[c] (llama2.c, GGUF and
// Hugging Face all store weights this way).
struct MatrixView {
  DType dtype = DType::F32;
  const void* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t cols = 0;

  std::size_t bytes() const { return row_bytes(dtype, cols) * std::size_t(rows); }
  const std::uint8_t* row_ptr(std::int64_t r) const {
    return static_cast<const std::uint8_t*>(data) + row_bytes(dtype, cols) * std::size_t(r);
  }
};

// Type-erased owner of the memory behind views (shared so that a model and a
// copy of its weights can outlive the loader).
using KeepAlive = std::shared_ptr<const void>;

}  // namespace fastinfer
