// Stored weight and KV elements widened to f32 on the device: the device
// side of core/dtype.hpp (f16 and bf16 as IEEE half / bfloat16, exactly as
// f16_to_f32 and bf16_to_f32 decode them) and of the f32 -> f16 / bf16
// rounding (round to nearest even, as f32_to_f16 / f32_to_bf16 do).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cuda {

template <DType D>
struct DeviceDType;

template <>
struct DeviceDType<DType::F32> {
  using Storage = float;
  __device__ static float load(const Storage* p, std::int64_t i) { return p[i]; }
  __device__ static Storage store(float x) { return x; }
};
template <>
struct DeviceDType<DType::F16> {
  using Storage = __half;
  __device__ static float load(const Storage* p, std::int64_t i) { return __half2float(p[i]); }
  __device__ static Storage store(float x) { return __float2half_rn(x); }
};
template <>
struct DeviceDType<DType::BF16> {
  using Storage = __nv_bfloat16;
  __device__ static float load(const Storage* p, std::int64_t i) { return __bfloat162float(p[i]); }
  __device__ static Storage store(float x) { return __float2bfloat16_rn(x); }
};

// Q8_0 on the device. CudaBackend::upload regroups GGUF's 34-byte blocks
// (an f16 scale, 32 int8 quants) row by row: a row of `cols` values (a
// multiple of 32) is its cols quants, then its cols / 32 f16 scales. A row
// keeps the host's row_bytes(Q8_0, cols) (rows sit where MatrixView::row_ptr
// puts them), but its quants are contiguous: a 16-byte load is 16 quants of
// one block, 16-byte aligned when cols is a multiple of 256 (every model's
// widths; other rows take the kernels' one-value-a-lane path). A value is
// scale * quant, exact in f32 (an 11-bit significand times 8 bits).
template <>
struct DeviceDType<DType::Q8_0> {
  using Storage = std::int8_t;
  static constexpr int kBlock = 32;
  // Storage elements (bytes) from one row to the next.
  __host__ __device__ static constexpr std::int64_t row_stride(std::int64_t cols) { return cols + cols / 16; }
  // The scale of column c of the row whose quants start at `row`.
  __device__ static float scale(const Storage* row, std::int64_t cols, std::int64_t c) {
    return __half2float(reinterpret_cast<const __half*>(row + cols)[c / kBlock]);
  }
  __device__ static float load(const Storage* row, std::int64_t cols, std::int64_t c) {
    return scale(row, cols, c) * float(row[c]);
  }
};

// The device rows of a host Q8_0 matrix (MatrixLayout::rows: GGUF's blocks
// of an f16 scale and 32 quants), as upload copies them: per row, the
// quants of every block, then the scales (MatrixLayout::q8_0_split_rows).
inline std::vector<std::uint8_t> q8_0_split_rows(const MatrixView& w) {
  constexpr std::int64_t B = DeviceDType<DType::Q8_0>::kBlock;
  FASTINFER_CHECK(
      w.dtype == DType::Q8_0 && w.layout == MatrixLayout::rows, InvalidArgument,
      "cuda: upload takes Q8_0 weights in row layout (a matrix regrouped for another backend came in)");
  FASTINFER_CHECK(w.cols % B == 0, InvalidArgument, "cuda: a Q8_0 matrix of ", w.cols,
                  " columns (the rows of Q8_0 blocks hold a multiple of 32)");
  const std::size_t stride = row_bytes(DType::Q8_0, w.cols), blocks = std::size_t(w.cols / B);
  std::vector<std::uint8_t> out(stride * std::size_t(w.rows));
  for (std::int64_t r = 0; r < w.rows; ++r) {
    const std::uint8_t* src = w.row_ptr(r);
    std::uint8_t* quants = out.data() + stride * std::size_t(r);
    std::uint8_t* scales = quants + w.cols;
    for (std::size_t b = 0; b < blocks; ++b, src += 2 + B) {
      std::memcpy(scales + 2 * b, src, 2);
      std::memcpy(quants + B * b, src + 2, B);
    }
  }
  return out;
}

// Refuses a weight the kernels cannot read: Q8_0 that did not come through
// CudaBackend::upload (its device rows).
inline void check_device_weight(const MatrixView& w) {
  FASTINFER_CHECK(
      w.dtype != DType::Q8_0 || w.layout == MatrixLayout::q8_0_split_rows, InvalidArgument,
      "cuda: a Q8_0 weight not uploaded by CudaBackend::upload (its blocks are not in device rows)");
}

// Storage elements from one row of a weight matrix to the next.
template <DType D>
__host__ __device__ constexpr std::int64_t row_stride(std::int64_t cols) {
  if constexpr (D == DType::Q8_0) {
    return DeviceDType<D>::row_stride(cols);
  } else {
    return cols;
  }
}

// Element c of the weight row starting at `row` (of `cols` values), widened.
template <DType D>
__device__ inline float load_weight(const typename DeviceDType<D>::Storage* row, std::int64_t cols,
                                    std::int64_t c) {
  if constexpr (D == DType::Q8_0) {
    return DeviceDType<D>::load(row, cols, c);
  } else {
    return DeviceDType<D>::load(row, c);
  }
}

// Calls f(std::integral_constant<DType, D>{}) for the dtype of a weight
// matrix on the device.
template <typename F>
decltype(auto) visit_device_dtype(DType d, F&& f) {
  switch (d) {
    case DType::F16: return f(std::integral_constant<DType, DType::F16>{});
    case DType::BF16: return f(std::integral_constant<DType, DType::BF16>{});
    case DType::Q8_0: return f(std::integral_constant<DType, DType::Q8_0>{});
    case DType::F32: break;
  }
  return f(std::integral_constant<DType, DType::F32>{});
}

}  // namespace fastinfer::cuda
