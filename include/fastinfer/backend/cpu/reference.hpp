// Scalar reference kernels of the CPU backend: the oracle every vectorised
// kernel is tested against. Plain loops, f32 (or double where it is cheap)
// accumulation, no threads, no intrinsics. Do not optimise these.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastinfer/core/dtype.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/core/rope_style.hpp"

namespace fastinfer::cpu::reference {

// dst[i] = element i of a row of `dtype` (not Q8_0).
inline void load_row(DType dtype, const void* src, float* dst, std::int64_t n) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, std::size_t(n) * 4); return;
    case DType::F16: {
      auto* s = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::BF16: {
      auto* s = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0: {
      auto* s = static_cast<const std::uint8_t*>(src);
      for (std::int64_t b = 0; b < n / 32; ++b, s += 34) {
        std::uint16_t d;
        std::memcpy(&d, s, 2);
        const float scale = f16_to_f32(d);
        for (int j = 0; j < 32; ++j) dst[b * 32 + j] = scale * float(std::int8_t(s[2 + j]));
      }
      return;
    }
  }
}

// y[r] = sum_c W[r][c] x[c]
inline void matvec(const MatrixView& w, const float* x, float* y) {
  float* row = new float[std::size_t(w.cols)];
  for (std::int64_t r = 0; r < w.rows; ++r) {
    load_row(w.dtype, w.row_ptr(r), row, w.cols);
    float acc = 0.0f;
    for (std::int64_t c = 0; c < w.cols; ++c) acc += row[c] * x[c];
    y[r] = acc;
  }
  delete[] row;
}

// Y[t][r] = sum_c W[r][c] X[t][c] for t < n: n tokens through one linear layer.
inline void matmul(const MatrixView& w, const float* x, std::int64_t n, float* y) {
  for (std::int64_t t = 0; t < n; ++t) matvec(w, x + t * w.cols, y + t * w.rows);
}

inline void rmsnorm(float* out, const float* x, const float* weight, std::int64_t n, float eps) {
  float ss = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / float(n) + eps);
  for (std::int64_t i = 0; i < n; ++i) out[i] = weight[i] * (scale * x[i]);
}

// Rotates each of n_heads heads of `vec` ([n_heads][head_dim]) to position pos.
// Frequencies as llama2.c computes them: theta^(-2i/head_dim) in f32.
inline void rope(float* vec, int n_heads, int head_dim, int pos, float theta, RopeStyle style) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = vec + std::int64_t(h) * head_dim;
    for (int i = 0; i < half; ++i) {
      const float freq = 1.0f / std::pow(theta, float(2 * i) / float(head_dim));
      const float angle = float(pos) * freq;
      const float c = std::cos(angle), s = std::sin(angle);
      const int a = style == RopeStyle::Interleaved ? 2 * i : i;
      const int b = style == RopeStyle::Interleaved ? 2 * i + 1 : i + half;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

// gate[i] = silu(gate[i]) * up[i]
inline void swiglu(float* gate, const float* up, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

inline void softmax(float* x, std::int64_t n) {
  float mx = x[0];
  for (std::int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  for (std::int64_t i = 0; i < n; ++i) x[i] /= sum;
}

// Index of the first maximum.
inline std::int64_t argmax(const float* x, std::int64_t n) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

inline void add(float* y, const float* x, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace fastinfer::cpu::reference
