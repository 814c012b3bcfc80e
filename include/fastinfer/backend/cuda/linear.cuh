// y[n][rows] = x[n][cols] W^T on the device, W row-major [rows][cols] in f32,
// f16, bf16 or Q8_0 (dtype.cuh's device rows), x and y f32.
//
//   n <= kGemvRows   gemv: a few warps per output row (gemv_shape below),
//                    f32 activations times widened weights, f32
//                    accumulation; the weights are streamed once for all n
//                    rows (decode and short verification passes are
//                    weight-bandwidth bound). A row's sum runs in the same
//                    order whatever n is, so its bits do not depend on the
//                    pass size (batch invariance, as cpu::matmul keeps up
//                    to 32 rows).
//                    cpu: cpu::matvec / cpu::matmul (same products, another
//                    summation order). Q8_0: a lane's 16 quants of one block
//                    times 16 activations summed, then times the block's
//                    scale, in registers (the f32 product of the
//                    dequantized weights up to rounding; the CPU's Q8_0
//                    matmul also rounds the activations to int8).
//   n >  kGemvRows   Q8_0: the gemv, 32 rows of x at a time (each weight
//                    read once per 32 rows; a row's bits never depend on
//                    the pass). Others: cuBLAS GemmEx, f32 accumulation
//                    (CUBLAS_COMPUTE_32F: no TF32). f16/bf16 weights need
//                    activations of their own type, so x is first rounded
//                    to it: an error of the 16-bit format on the
//                    activations that the CPU's matmul (f32 activations)
//                    does not make; the tests state the tolerance.
#pragma once

#include <algorithm>
#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/device_buffer.cuh"
#include "fastinfer/backend/cuda/dtype.cuh"
#include "fastinfer/backend/cuda/elementwise.cuh"
#include "fastinfer/backend/cuda/launch.cuh"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cuda {

constexpr int kGemvRows = 32;

namespace linear_detail {

constexpr int kLoads = 4;  // 16-byte weight loads per lane in flight at once (below)

// 16 bytes of a weight row widened to f32: 4 values (f32) or 8 (f16, bf16).
template <DType D>
struct Vec16;
template <>
struct Vec16<DType::F32> {
  static constexpr int kValues = 4;
  __device__ static void widen(const uint4& v, float* out) {
    out[0] = __uint_as_float(v.x), out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z), out[3] = __uint_as_float(v.w);
  }
};
template <DType D>
struct Vec16Half {
  static constexpr int kValues = 8;
  __device__ static void widen(const uint4& v, float* out) {
    const auto* h = reinterpret_cast<const typename DeviceDType<D>::Storage*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = DeviceDType<D>::load(h, i);
  }
};
template <>
struct Vec16<DType::F16> : Vec16Half<DType::F16> {};
template <>
struct Vec16<DType::BF16> : Vec16Half<DType::BF16> {};
// Q8_0: 16 quants of one block (the scale is applied to their sum).
template <>
struct Vec16<DType::Q8_0> {
  static constexpr int kValues = 16;
  __device__ static void widen(const uint4& v, float* out) {
    const auto* q = reinterpret_cast<const std::int8_t*>(&v);
#pragma unroll
    for (int i = 0; i < 16; ++i) out[i] = float(q[i]);
  }
};

// A lane's kLoads 16-byte weight loads of the slice starting at column
// `base` (those inside the row), issued together: the read-only path, and
// nothing waits on them until the first FMA.
template <DType D>
__device__ inline void load_slice(const typename DeviceDType<D>::Storage* wr, std::int64_t cols, std::int64_t base,
                                  int lane, uint4 (&raw)[kLoads]) {
  constexpr int V = Vec16<D>::kValues;
#pragma unroll
  for (int k = 0; k < kLoads; ++k) {
    const std::int64_t c = base + (std::int64_t(k) * 32 + lane) * V;
    if (c < cols) raw[k] = __ldg(reinterpret_cast<const uint4*>(wr + c));
  }
}

// V activations x[0..V) as float4 loads (x 16-byte aligned: the vector path's condition).
template <int V>
__device__ inline void load_x(const float* x, float* out) {
#pragma unroll
  for (int e = 0; e < V; e += 4) {
    const float4 v = *reinterpret_cast<const float4*>(x + e);
    out[e] = v.x, out[e + 1] = v.y, out[e + 2] = v.z, out[e + 3] = v.w;
  }
}

// The matrices of one GEMV launch: up to kMaxGroup weights of one type and
// width that read the same x (q, k and v; gate and up), blocks
// [first_block[m], first_block[m + 1]) serving matrix m. One launch instead
// of three streams the weights back to back and pays one launch's latency.
constexpr int kMaxGroup = 3;
struct GemvGroup {
  const void* w[kMaxGroup] = {};
  float* y[kMaxGroup] = {};
  std::int64_t rows[kMaxGroup] = {};
  std::int32_t first_block[kMaxGroup + 1] = {};
  int count = 0;
};

// How a GEMV launch shares out a row (host and device). Its columns are
// cut into slices of slice_cols<D>() values: kLoads 16-byte loads per lane,
// one round of loads in flight per warp. `row_warps` (S) warps share a row,
// warp s taking slices s, s + S, ...; with `parts` 2 (swiglu) a row is a
// gate row and its up row, 2 S warps; `block_rows` rows per block, about
// kBlockWarps warps. A matrix of few rows (the 1B's o and down
// projections: 2048) thus still gives every SM dozens of warps with loads
// in flight, where one warp per row left the down projection at a third of
// HBM bandwidth. The shape depends on cols and the weight type only, never
// on n or on the matrices launched beside it, so a row's bits do not either.
constexpr int kMaxRowWarps = 8;
constexpr int kBlockWarps = 8;
constexpr int kMaxBlockWarps = 2 * kMaxRowWarps;

template <DType D>
__host__ __device__ constexpr std::int64_t slice_cols() {
  return 32 * kLoads * Vec16<D>::kValues;
}

struct GemvShape {
  int row_warps = 1, block_rows = 1, parts = 1;
  __host__ __device__ int warps_per_row() const { return row_warps * parts; }
  __host__ __device__ int warps() const { return warps_per_row() * block_rows; }
};

template <DType D>
inline GemvShape gemv_shape(std::int64_t cols, bool swiglu) {
  GemvShape s;
  s.parts = swiglu ? 2 : 1;
  const std::int64_t slices = (cols + slice_cols<D>() - 1) / slice_cols<D>();
  s.row_warps = int(std::min<std::int64_t>(kMaxRowWarps, std::max<std::int64_t>(1, slices)));
  s.block_rows = std::max(1, kBlockWarps / s.warps_per_row());
  return s;
}

// One warp's part of a row: the n <= N rows of x dotted with the columns of
// its slices, added to acc[0..n) (a lane's partial; the caller reduces the
// warp). `vec`: weights and x 16-byte aligned and cols a multiple of the
// vector width, else one element per lane per step. `raw` holds the first
// slice's weights, loaded before the kernel's wait. A lane adds its
// products in ascending column order whatever n is.
template <DType D, int N>
__device__ inline void slices_dot(const typename DeviceDType<D>::Storage* wr, const float* x, std::int64_t cols, int n,
                                  int vec, int lane, std::int64_t first_slice, int stride, uint4 (&raw)[kLoads],
                                  float* acc) {
  constexpr int V = Vec16<D>::kValues;
  constexpr std::int64_t kSlice = slice_cols<D>();
  for (std::int64_t s = first_slice; s * kSlice < cols; s += stride) {
    const std::int64_t base = s * kSlice;
    if (vec) {
      if (s != first_slice) load_slice<D>(wr, cols, base, lane, raw);
#pragma unroll
      for (int k = 0; k < kLoads; ++k) {
        const std::int64_t c = base + (std::int64_t(k) * 32 + lane) * V;
        if (c >= cols) break;
        float wv[V];
        Vec16<D>::widen(raw[k], wv);
        if constexpr (D == DType::Q8_0) {
          const float scale = DeviceDType<D>::scale(wr, cols, c);
#pragma unroll
          for (int i = 0; i < N; ++i)
            if (i < n) {
              float xv[V];
              load_x<V>(x + i * cols + c, xv);
              float block = 0.0f;
#pragma unroll
              for (int e = 0; e < V; ++e) block = fmaf(wv[e], xv[e], block);
              acc[i] = fmaf(block, scale, acc[i]);
            }
        } else {
#pragma unroll
          for (int i = 0; i < N; ++i)
            if (i < n) {
              float xv[V];
              load_x<V>(x + i * cols + c, xv);
#pragma unroll
              for (int e = 0; e < V; ++e) acc[i] = fmaf(wv[e], xv[e], acc[i]);
            }
        }
      }
    } else {
      const std::int64_t end = base + kSlice < cols ? base + kSlice : cols;
      for (std::int64_t c = base + lane; c < end; c += 32) {
        const float wv = load_weight<D>(wr, cols, c);
#pragma unroll
        for (int i = 0; i < N; ++i)
          if (i < n) acc[i] = fmaf(wv, x[i * cols + c], acc[i]);
      }
    }
  }
}

// grid: the blocks of every matrix of g (block_rows rows each), block
// shape.warps() warps. y[i][r] for the n <= N rows of x; with swiglu the
// group is (gate, up), the grid covers the gate rows and y_gate[i][r] =
// silu(gate) * up, the expression elementwise.cuh's swiglu computes (same
// bits as linear, linear, swiglu). A row's sum: each warp's lanes' partials
// reduced by shuffles, then the S warps' sums added in slice order.
template <DType D, int N>
__global__ void __launch_bounds__(kMaxBlockWarps * 32)
    gemv_kernel(GemvGroup g, const float* x, std::int64_t cols, int n, int vec, GemvShape shape) {
  FASTINFER_CUDA_RELEASE_NEXT();
  using S = typename DeviceDType<D>::Storage;
  const bool swiglu = shape.parts == 2;
  // This block's matrix (unrolled: the parameter arrays stay in registers).
  const void* w = g.w[0];
  float* y = g.y[0];
  std::int64_t rows = g.rows[0];
  std::int32_t first = 0;
  if (!swiglu) {
#pragma unroll
    for (int m = 1; m < kMaxGroup; ++m)
      if (m < g.count && std::int32_t(blockIdx.x) >= g.first_block[m])
        w = g.w[m], y = g.y[m], rows = g.rows[m], first = g.first_block[m];
  }
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int per_row = shape.warps_per_row();
  const int part = (warp % per_row) / shape.row_warps, slice = warp % shape.row_warps;
  const std::int64_t row0 = std::int64_t(std::int32_t(blockIdx.x) - first) * shape.block_rows;
  const std::int64_t r = row0 + warp / per_row;
  const bool live = r < rows;
  const S* wr = static_cast<const S*>(part == 0 ? w : g.w[1]) + (live ? r : 0) * row_stride<D>(cols);
  // The first slice's weights stream in while the kernel before finishes.
  uint4 raw[kLoads];
  if (live && vec) load_slice<D>(wr, cols, slice * slice_cols<D>(), lane, raw);
  FASTINFER_CUDA_WAIT_PREVIOUS();

  float acc[N];
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] = 0.0f;
  if (live) slices_dot<D, N>(wr, x, cols, n, vec, lane, slice, shape.row_warps, raw, acc);
  __shared__ float partial[kMaxBlockWarps][N];
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    for (int o = 16; o > 0; o >>= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    if (lane == 0) partial[warp][i] = acc[i];
  }
  __syncthreads();
  for (int idx = int(threadIdx.x); idx < shape.block_rows * n; idx += int(blockDim.x)) {
    const int rr = idx / n, i = idx % n;
    if (row0 + rr >= rows) continue;
    const float* p = &partial[rr * per_row][0];
    float sum = p[i];
    for (int s = 1; s < shape.row_warps; ++s) sum += p[s * N + i];
    if (swiglu) {
      const float* q = &partial[rr * per_row + shape.row_warps][0];
      float up = q[i];
      for (int s = 1; s < shape.row_warps; ++s) up += q[s * N + i];
      sum = swiglu_value(sum, up);
    }
    y[i * rows + row0 + rr] = sum;
  }
}

// ws[0..count) share x's width and dtype D; `swiglu`: ws is (gate, up) of
// one shape and ys[0] gets silu(gate) * up.
template <DType D, int N>
void launch_gemv(const MatrixView* ws, float* const* ys, int count, const float* x, std::int64_t n, bool swiglu,
                 cudaStream_t stream) {
  constexpr int V = Vec16<D>::kValues;
  const GemvShape shape = gemv_shape<D>(ws[0].cols, swiglu);
  GemvGroup g;
  g.count = count;
  using S = typename DeviceDType<D>::Storage;
  const bool rows_aligned = row_stride<D>(ws[0].cols) * std::int64_t(sizeof(S)) % 16 == 0;
  int vec = rows_aligned && ws[0].cols % V == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0 ? 1 : 0;
  std::int64_t blocks = 0;
  for (int m = 0; m < count; ++m) {
    g.w[m] = ws[m].data, g.y[m] = ys[m], g.rows[m] = ws[m].rows;
    g.first_block[m] = std::int32_t(blocks);
    if (!swiglu || m == 0) blocks += (ws[m].rows + shape.block_rows - 1) / shape.block_rows;
    if (reinterpret_cast<std::uintptr_t>(ws[m].data) % 16 != 0) vec = 0;
  }
  g.first_block[count] = std::int32_t(blocks);
  launch("gemv_kernel", gemv_kernel<D, N>, dim3(unsigned(blocks)), dim3(unsigned(shape.warps() * 32)), 0, stream, g,
         x, ws[0].cols, int(n), vec, shape);
}

// The smallest of N = 1, 2, 4, 8, 16, 32 that holds n rows: six kernels per
// weight type, not 32.
template <DType D, int N = 1>
void gemv_rows(const MatrixView* ws, float* const* ys, int count, const float* x, std::int64_t n, bool swiglu,
               cudaStream_t stream) {
  if constexpr (N < kGemvRows) {
    if (n > N) return gemv_rows<D, 2 * N>(ws, ys, count, x, n, swiglu, stream);
  }
  launch_gemv<D, N>(ws, ys, count, x, n, swiglu, stream);
}

template <DType D>
constexpr cudaDataType_t cuda_data_type() {
  static_assert(D != DType::Q8_0, "cuBLAS has no Q8_0 type: Q8_0 takes the gemv at every pass size");
  if constexpr (D == DType::F32) return CUDA_R_32F;
  if constexpr (D == DType::F16) return CUDA_R_16F;
  return CUDA_R_16BF;
}

// y = x W^T through cuBLAS (n > kGemvRows): `scratch` holds x rounded to a
// 16-bit weight type (grown on demand).
template <DType D>
void gemm_cublas(const MatrixView& w, const float* x, std::int64_t n, float* y, cublasHandle_t blas,
                 DeviceBuffer<std::uint16_t>& scratch, cudaStream_t stream) {
  const void* b = x;
  if constexpr (D != DType::F32) {
    scratch.reserve_discard(std::size_t(n * w.cols));
    round_to<D>(reinterpret_cast<typename DeviceDType<D>::Storage*>(scratch.data()), x, n * w.cols, stream);
    b = scratch.data();
  }
  // Column-major view: Y[rows x n] = op(W)[rows x cols] X[cols x n], W
  // seen as its transpose [cols x rows] with leading dimension cols.
  const float alpha = 1.0f, beta = 0.0f;
  constexpr cudaDataType_t T = cuda_data_type<D>();
  FASTINFER_CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(n), int(w.cols),
                                      &alpha, w.data, T, int(w.cols), b, T, int(w.cols), &beta, y, CUDA_R_32F,
                                      int(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace linear_detail

// `scratch` holds x rounded to a 16-bit weight type (grown on demand).
inline void linear(const MatrixView& w, const float* x, std::int64_t n, float* y, cublasHandle_t blas,
                   DeviceBuffer<std::uint16_t>& scratch, cudaStream_t stream) {
  namespace ld = linear_detail;
  check_device_weight(w);
  if (n <= 0) return;
  visit_device_dtype(w.dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    if (n <= kGemvRows || D == DType::Q8_0) {
      // Q8_0 past 32 rows: the gemv, 32 rows at a time.
      for (std::int64_t t = 0; t < n; t += kGemvRows) {
        float* const ys[1] = {y + t * w.rows};
        ld::gemv_rows<D>(&w, ys, 1, x + t * w.cols, std::min<std::int64_t>(kGemvRows, n - t), false, stream);
      }
      return;
    }
    if constexpr (D != DType::Q8_0) ld::gemm_cublas<D>(w, x, n, y, blas, scratch, stream);
  });
}

// y[m] = x ws[m]^T for count weights that read the same x (q, k, v; gate,
// up). Up to 32 rows of x and weights of one dtype and width: one GEMV
// launch over all of them, each row's sum exactly as linear() computes it
// (same kernel, same order); otherwise one linear() each.
inline void linear_group(const MatrixView* ws, float* const* ys, int count, const float* x, std::int64_t n,
                         cublasHandle_t blas, DeviceBuffer<std::uint16_t>& scratch, cudaStream_t stream) {
  namespace ld = linear_detail;
  for (int m = 0; m < count; ++m) check_device_weight(ws[m]);
  bool one_launch = n > 0 && n <= kGemvRows && count >= 1 && count <= ld::kMaxGroup;
  for (int m = 1; one_launch && m < count; ++m)
    one_launch = ws[m].dtype == ws[0].dtype && ws[m].cols == ws[0].cols;
  if (!one_launch) {
    for (int m = 0; m < count; ++m) linear(ws[m], x, n, ys[m], blas, scratch, stream);
    return;
  }
  visit_device_dtype(ws[0].dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    ld::gemv_rows<D>(ws, ys, count, x, n, false, stream);
  });
}

// out = silu(x gate^T) * (x up^T), bit for bit linear(gate), linear(up),
// swiglu(): up to 32 rows of x in one GEMV launch (a warp computes a gate
// row and its up row), more through those three calls (`up_scratch` holds
// x up^T there).
inline void linear_swiglu(const MatrixView& gate, const MatrixView& up, const float* x, std::int64_t n, float* out,
                          DeviceBuffer<float>& up_scratch, cublasHandle_t blas, DeviceBuffer<std::uint16_t>& scratch,
                          cudaStream_t stream) {
  namespace ld = linear_detail;
  FASTINFER_CHECK(gate.rows == up.rows && gate.cols == up.cols && gate.dtype == up.dtype, InvalidArgument,
                  "linear_swiglu: gate [", gate.rows, " x ", gate.cols, "] and up [", up.rows, " x ", up.cols,
                  "] differ in shape or type");
  check_device_weight(gate);
  check_device_weight(up);
  if (n <= 0) return;
  if (n > kGemvRows) {
    up_scratch.reserve_discard(std::size_t(n * up.rows));
    linear(gate, x, n, out, blas, scratch, stream);
    linear(up, x, n, up_scratch.data(), blas, scratch, stream);
    swiglu(out, up_scratch.data(), n * up.rows, stream);
    return;
  }
  const MatrixView ws[2] = {gate, up};
  float* const ys[2] = {out, nullptr};
  visit_device_dtype(gate.dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    ld::gemv_rows<D>(ws, ys, 2, x, n, true, stream);
  });
}

}  // namespace fastinfer::cuda
