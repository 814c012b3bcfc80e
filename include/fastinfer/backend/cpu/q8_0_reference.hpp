// Q8_0 (GGUF's 8-bit block format): the block layouts and the scalar
// references every Q8_0 kernel is tested against.
//
// A Q8_0 row is blocks of 32 values: an f16 scale d and 32 int8 quants q,
// value = d * q. A matvec quantizes the activation vector once per call to
// int8 blocks with an f32 scale, then every row is a sum over blocks of
// (int32 dot of the quants) * d_w * d_x. This is llama.cpp's scheme (there the
// activation scale is rounded to f16 too; we keep it f32, which only removes
// an error). The only extra error over an f32 matvec of the dequantized
// weights is the activation rounding: per block at most d_x/2 =
// amax_block(x)/254 per element.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer::cpu::q8_0 {

inline constexpr int kBlockSize = 32;

// Weight block, byte-compatible with ggml's block_q8_0 and core/tensor.hpp.
struct Block {
  std::uint16_t d;  // f16 scale
  std::int8_t qs[kBlockSize];
};
static_assert(sizeof(Block) == 34, "a Q8_0 block is one f16 scale and 32 int8 quants (34 bytes, as in GGUF)");
static_assert(row_bytes(DType::Q8_0, kBlockSize) == sizeof(Block), "core/tensor.hpp disagrees on the Q8_0 block size");

// Activation block: f32 scale, only ever lives in a per-call scratch buffer.
struct ActivationBlock {
  float d;
  std::int8_t qs[kBlockSize];
};

// ---- scalar references -----------------------------------------------------

// ggml's quantize_row_q8_0_ref: d = max|x| / 127 rounded to f16, q = round(x / d)
// (computed as x * (1/d) with the f32 d, as ggml does).
inline void quantize_row_reference(const float* x, void* dst, std::int64_t n) {
  FASTINFER_CHECK(n % kBlockSize == 0, InvalidArgument, "Q8_0 row length ", n,
                  " is not a multiple of ", kBlockSize);
  auto* out = static_cast<std::uint8_t*>(dst);
  for (std::int64_t b = 0; b < n / kBlockSize; ++b, x += kBlockSize, out += sizeof(Block)) {
    float amax = 0.0f;
    for (int j = 0; j < kBlockSize; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const std::uint16_t dh = f32_to_f16(d);
    std::memcpy(out, &dh, 2);
    for (int j = 0; j < kBlockSize; ++j) out[2 + j] = std::uint8_t(std::int8_t(std::lround(x[j] * id)));
  }
}

inline void dequantize_row_reference(const void* src, float* y, std::int64_t n) {
  auto* in = static_cast<const std::uint8_t*>(src);
  for (std::int64_t b = 0; b < n / kBlockSize; ++b, in += sizeof(Block)) {
    std::uint16_t dh;
    std::memcpy(&dh, in, 2);
    const float d = f16_to_f32(dh);
    for (int j = 0; j < kBlockSize; ++j) y[b * kBlockSize + j] = d * float(std::int8_t(in[2 + j]));
  }
}

// Activation quantization: same rounding as the weights, scale kept in f32.
// Quants lie in [-127, 127], which the AVX2 sign trick relies on.
inline void quantize_activation(const float* x, ActivationBlock* out, std::int64_t n) {
  for (std::int64_t b = 0; b < n / kBlockSize; ++b, x += kBlockSize) {
    float amax = 0.0f;
    for (int j = 0; j < kBlockSize; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = d;
    for (int j = 0; j < kBlockSize; ++j) out[b].qs[j] = std::int8_t(std::lround(x[j] * id));
  }
}

// Exact int32 dot product of two int8 vectors: the one scalar int8 dot loop
// of the library (every reference calls it).
//
// Both operands are read as int8 on purpose. g++ 12 with -march on a CPU with
// AVX-VNNI / AVX512-VNNI vectorises the same loop written over a uint8
// pointer with a per-element int8 cast (`int8_t(w[j]) * x[j]`) into vpdpbusd,
// which multiplies *unsigned* by signed bytes: every negative weight comes out
// 256 too large. Reading through int8 pointers gives the vectoriser no
// unsigned operand to misread (checked with g++ 12.2 -O2/-O3, -march=native on a
// Zen 5, sapphirerapids and alderlake; the test_q8_0 cases with negative quants
// catch a relapse).
inline std::int32_t dot_int8_reference(const std::int8_t* a, const std::int8_t* b, int n) {
  std::int32_t s = 0;
  for (int j = 0; j < n; ++j) s += std::int32_t(a[j]) * std::int32_t(b[j]);
  return s;
}

// acc = add(acc, float(block dot), d_w * d_x) over the blocks in order,
// block dots exact in int32: the references below differ only in `add`.
template <class Add>
inline float fold_block_dots(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks, Add add) {
  auto* w = static_cast<const std::uint8_t*>(w_row);
  float acc = 0.0f;
  for (std::int64_t b = 0; b < n_blocks; ++b, w += sizeof(Block)) {
    std::uint16_t dh;
    std::memcpy(&dh, w, 2);
    const std::int32_t s = dot_int8_reference(reinterpret_cast<const std::int8_t*>(w + 2), x[b].qs, kBlockSize);
    acc = add(acc, float(s), f16_to_f32(dh) * x[b].d);
  }
  return acc;
}

// sum over blocks of (sum_j qw_j * qx_j) * d_w * d_x, block sums exact in int32.
inline float dot_reference(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
  return fold_block_dots(w_row, x, n_blocks, [](float acc, float s, float scale) { return acc + s * scale; });
}

// The amx level's order (q8_0_amx.hpp): one fused multiply-add a block,
// acc = fma(float(block dot), d_w * d_x, acc), in block order.
inline float dot_blocks_fma_reference(const void* w_row, const ActivationBlock* x, std::int64_t n_blocks) {
  return fold_block_dots(w_row, x, n_blocks,
                         [](float acc, float s, float scale) { return std::fma(s, scale, acc); });
}

namespace detail {
inline void check_matrix(const MatrixView& w) {
  FASTINFER_CHECK(w.dtype == DType::Q8_0, InvalidArgument, "q8_0::matvec needs a Q8_0 matrix, got ",
                  dtype_name(w.dtype));
  FASTINFER_CHECK(w.cols % kBlockSize == 0, InvalidArgument, "Q8_0 matrix has ", w.cols,
                  " columns, not a multiple of ", kBlockSize);
}
}  // namespace detail

// y[r] = sum_c W[r][c] x[c] with x quantized per block (the oracle).
inline void matvec_reference(const MatrixView& w, const float* x, float* y) {
  detail::check_matrix(w);
  std::vector<ActivationBlock> xq(std::size_t(w.cols / kBlockSize));
  quantize_activation(x, xq.data(), w.cols);
  for (std::int64_t r = 0; r < w.rows; ++r) y[r] = dot_reference(w.row_ptr(r), xq.data(), w.cols / kBlockSize);
}

}  // namespace fastinfer::cpu::q8_0
