// The CPU backend's kernel interface: what the model calls. Each kernel has a
// scalar twin in reference.hpp that the tests compare it with.
//
// `threads` is the most threads the caller grants; a kernel uses fewer when
// its work is too small to pay for an OpenMP hand-off (a 260K-parameter model
// must not get slower on 2 threads than on 1).
//
// NOTE: first cut forwards to the scalar references; the vectorised versions
// replace these bodies without changing the signatures.
#pragma once

#include <cstdint>

#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/core/tensor.hpp"
#include "fastinfer/model/config.hpp"

namespace fastinfer::cpu {

inline void load_row(DType dtype, const void* src, float* dst, std::int64_t n) {
  reference::load_row(dtype, src, dst, n);
}
inline void matvec(const MatrixView& w, const float* x, float* y, int threads = 1) {
  (void)threads;
  reference::matvec(w, x, y);
}
inline void matmul(const MatrixView& w, const float* x, std::int64_t n, float* y, int threads = 1) {
  (void)threads;
  reference::matmul(w, x, n, y);
}
inline void rmsnorm(float* out, const float* x, const float* weight, std::int64_t n, float eps) {
  reference::rmsnorm(out, x, weight, n, eps);
}
inline void rope(float* vec, int n_heads, int head_dim, int pos, float theta, RopeStyle style) {
  reference::rope(vec, n_heads, head_dim, pos, theta, style);
}
inline void swiglu(float* gate, const float* up, std::int64_t n) { reference::swiglu(gate, up, n); }
inline void softmax(float* x, std::int64_t n) { reference::softmax(x, n); }
inline std::int64_t argmax(const float* x, std::int64_t n) { return reference::argmax(x, n); }
inline void add(float* y, const float* x, std::int64_t n) { reference::add(y, x, n); }

}  // namespace fastinfer::cpu
