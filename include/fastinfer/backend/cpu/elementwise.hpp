// The vector kernels of a transformer step that are not matrix products:
// row widening, RMSNorm, RoPE, SwiGLU, softmax, argmax, residual add.
//
// They touch a few thousand floats each, far below what pays for a second
// thread, so they always run on the calling thread (no `threads` argument).
// Sums are vectorised, so they round differently from the scalar references
// (a few ulp; the tests state the tolerances). argmax is exact: same index as
// the reference, first maximum wins.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/cpu_target.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/rope_style.hpp"
#include "fastinfer/core/tensor.hpp"

// xsimd at the build's -march: g++ 12's false intrinsic warnings (cpu_target.hpp).
FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
namespace fastinfer::cpu {
namespace elementwise_detail {

#if FASTINFER_CPU_SIMD
template <DType D>
inline void widen(const void* src, float* dst, std::int64_t n) {
  constexpr std::int64_t L = std::int64_t(kLanes);
  constexpr std::int64_t elem = D == DType::F32 ? 4 : 2;
  auto* s = static_cast<const std::uint8_t*>(src);
  std::int64_t i = 0;
  for (; i + L <= n; i += L) arch_detail::load_f32<D>(s + i * elem).store_unaligned(dst + i);
  for (; i < n; ++i) dst[i] = load_scalar<D>(src, i);
}
#endif

}  // namespace elementwise_detail

// dst[i] = element i of a stored row of `dtype` (f32, bf16 or f16; Q8_0 rows
// go through the reference until the Q8_0 kernel is wired in).
inline void load_row(DType dtype, const void* src, float* dst, std::int64_t n) {
#if FASTINFER_CPU_SIMD
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, std::size_t(n) * 4);
      return;
    case DType::BF16:
      elementwise_detail::widen<DType::BF16>(src, dst, n);
      return;
    case DType::F16:
      elementwise_detail::widen<DType::F16>(src, dst, n);
      return;
    case DType::Q8_0:
      break;
  }
#endif
  reference::load_row(dtype, src, dst, n);
}

// out[i] = weight[i] * x[i] / sqrt(mean(x^2) + eps). out may alias x.
inline void rmsnorm(float* out, const float* x, const float* weight, std::int64_t n, float eps) {
  float ss = 0.0f;
  std::int64_t i = 0;
#if FASTINFER_CPU_SIMD
  constexpr std::int64_t L = std::int64_t(kLanes);
  FloatBatch a0(0.0f), a1(0.0f);
  for (; i + 2 * L <= n; i += 2 * L) {
    const FloatBatch v0 = FloatBatch::load_unaligned(x + i), v1 = FloatBatch::load_unaligned(x + i + L);
    a0 = xsimd::fma(v0, v0, a0);
    a1 = xsimd::fma(v1, v1, a1);
  }
  ss = xsimd_compat::reduce_add(a0 + a1);
#endif
  for (; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / float(n) + eps);
  std::int64_t j = 0;
#if FASTINFER_CPU_SIMD
  const FloatBatch sv(scale);
  for (; j + L <= n; j += L)
    (FloatBatch::load_unaligned(weight + j) * (sv * FloatBatch::load_unaligned(x + j)))
        .store_unaligned(out + j);
#endif
  for (; j < n; ++j) out[j] = weight[j] * (scale * x[j]);
}

// Rotates each of n_heads heads of `vec` ([n_heads][head_dim]) to position
// pos. The angles are computed exactly as the reference does (f32 pow, cos,
// sin) but once per position and thread, not once per head and call: a
// per-thread table of every position up to the highest seen (grown on demand, kept
// while head_dim and theta stay the same) serves q and k of every layer and
// every row of a multi-token pass, whose rows sit at different positions
// (recomputing 2 x head_dim/2 sines per row and layer cost ~1 us a row).
inline void rope(float* vec, int n_heads, int head_dim, int pos, float theta, RopeStyle style) {
  FASTINFER_CHECK(head_dim > 0 && head_dim % 2 == 0, InvalidArgument,
                  "rope: head_dim must be positive and even, got ", head_dim);
  FASTINFER_CHECK(pos >= 0, InvalidArgument, "rope: position must not be negative, got ", pos);
  struct Table {
    int head_dim = -1, positions = 0;
    float theta = 0.0f;
    std::vector<float> cos, sin;  // [position][head_dim / 2]
  };
  // A few tables per thread, one per (head_dim, theta): a draft model and
  // its target, decoding in turn on one thread, must not rebuild each
  // other's table on every call.
  constexpr int kTables = 4;
  thread_local Table tables[kTables];
  thread_local int next_victim = 0;
  Table* found = nullptr;
  for (Table& c : tables)
    if (c.head_dim == head_dim && c.theta == theta) found = &c;
  if (found == nullptr) {
    found = &tables[next_victim];
    next_victim = (next_victim + 1) % kTables;
    found->head_dim = -1;
  }
  Table& t = *found;
  const int half = head_dim / 2;
  if (t.head_dim != head_dim || t.theta != theta) {
    t.head_dim = head_dim;
    t.theta = theta;
    t.positions = 0;
    // Room for 1024 positions up front (computed only when reached), so that
    // decoding allocates nothing per token; past that the vectors double.
    const std::size_t room = std::size_t(std::max(pos + 1, 1024)) * std::size_t(half);
    t.cos.reserve(room);
    t.sin.reserve(room);
  }
  if (pos >= t.positions) {
    const int grown = pos + 1;
    t.cos.resize(std::size_t(grown) * std::size_t(half));
    t.sin.resize(std::size_t(grown) * std::size_t(half));
    for (int p = t.positions; p < grown; ++p)
      for (int i = 0; i < half; ++i) {
        const float angle = rope_angle(p, i, head_dim, theta);
        t.cos[std::size_t(p) * std::size_t(half) + std::size_t(i)] = std::cos(angle);
        t.sin[std::size_t(p) * std::size_t(half) + std::size_t(i)] = std::sin(angle);
      }
    t.positions = grown;
  }
  const float* c = t.cos.data() + std::size_t(pos) * std::size_t(half);
  const float* s = t.sin.data() + std::size_t(pos) * std::size_t(half);
  for (int h = 0; h < n_heads; ++h) {
    float* v = vec + std::int64_t(h) * head_dim;
    if (style == RopeStyle::Interleaved) {
      for (int i = 0; i < half; ++i) {
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * c[i] - x1 * s[i];
        v[2 * i + 1] = x0 * s[i] + x1 * c[i];
      }
    } else {
      float* a = v;
      float* b = v + half;
      int i = 0;
#if FASTINFER_CPU_SIMD
      constexpr int L = int(kLanes);
      for (; i + L <= half; i += L) {
        const FloatBatch x0 = FloatBatch::load_unaligned(a + i), x1 = FloatBatch::load_unaligned(b + i);
        const FloatBatch cv = FloatBatch::load_unaligned(c + i), sv = FloatBatch::load_unaligned(s + i);
        (x0 * cv - x1 * sv).store_unaligned(a + i);
        (x0 * sv + x1 * cv).store_unaligned(b + i);
      }
#endif
      for (; i < half; ++i) {
        const float x0 = a[i], x1 = b[i];
        a[i] = x0 * c[i] - x1 * s[i];
        b[i] = x0 * s[i] + x1 * c[i];
      }
    }
  }
}

// gate[i] = silu(gate[i]) * up[i]
inline void swiglu(float* gate, const float* up, std::int64_t n) {
  std::int64_t i = 0;
#if FASTINFER_CPU_SIMD
  constexpr std::int64_t L = std::int64_t(kLanes);
  const FloatBatch one(1.0f);
  auto step = [&](const float* g_in, const float* u_in, float* out) {
    const FloatBatch g = FloatBatch::load_unaligned(g_in);
    (g / (one + xsimd::exp(-g)) * FloatBatch::load_unaligned(u_in)).store_unaligned(out);
  };
  for (; i + L <= n; i += L) step(gate + i, up + i, gate + i);
  // The tail through the same vector exp, padded: an element's bits never
  // depend on where it sits. The model calls this over rows x hidden_dim
  // values at once; with a scalar tail, a row whose last values fell in the
  // tail alone (hidden_dim 172, one row) took std::exp there and the vector
  // exp beside another row: its logits changed with the batch.
  if (i < n) {
    alignas(64) float g[kLanes] = {}, u[kLanes] = {}, out[kLanes];
    std::copy(gate + i, gate + n, g);
    std::copy(up + i, up + n, u);
    step(g, u, out);
    std::copy(out, out + (n - i), gate + i);
    i = n;
  }
#endif
  for (; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

// x = exp(x - max) / sum, in place. Throws InvalidArgument if n < 1.
inline void softmax(float* x, std::int64_t n) {
  FASTINFER_CHECK(n >= 1, InvalidArgument, "softmax: length must be at least 1, got ", n);
  std::int64_t i = 0;
  float mx = x[0];
#if FASTINFER_CPU_SIMD
  constexpr std::int64_t L = std::int64_t(kLanes);
  if (n >= L) {
    FloatBatch m = FloatBatch::load_unaligned(x);
    for (i = L; i + L <= n; i += L) m = xsimd::max(m, FloatBatch::load_unaligned(x + i));
    alignas(64) float lanes[kLanes];
    m.store_aligned(lanes);
    for (std::size_t l = 0; l < kLanes; ++l) mx = std::max(mx, lanes[l]);
  }
#endif
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  i = 0;
#if FASTINFER_CPU_SIMD
  const FloatBatch mv(mx);
  FloatBatch acc(0.0f);
  for (; i + L <= n; i += L) {
    const FloatBatch e = xsimd::exp(FloatBatch::load_unaligned(x + i) - mv);
    e.store_unaligned(x + i);
    acc += e;
  }
  sum = xsimd_compat::reduce_add(acc);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  i = 0;
#if FASTINFER_CPU_SIMD
  const FloatBatch iv(inv);
  for (; i + L <= n; i += L) (FloatBatch::load_unaligned(x + i) * iv).store_unaligned(x + i);
#endif
  for (; i < n; ++i) x[i] *= inv;
}

// Index of the first maximum, exactly as reference::argmax (NaNs never win;
// if x[0] is NaN the answer is 0). Each lane keeps the first maximum of its
// own columns by a strict comparison, and ties between lanes go to the
// smaller index. Indices ride in float lanes, exact below 2^24. Throws
// InvalidArgument if n < 1 (there is no index to return).
inline std::int64_t argmax(const float* x, std::int64_t n) {
  FASTINFER_CHECK(n >= 1, InvalidArgument, "argmax: length must be at least 1, got ", n);
#if FASTINFER_CPU_SIMD
  constexpr std::int64_t L = std::int64_t(kLanes);
  if (n >= 2 * L && n < (std::int64_t(1) << 24) && !std::isnan(x[0])) {
    alignas(64) float iota[kLanes];
    for (std::size_t l = 0; l < kLanes; ++l) iota[l] = float(l);
    FloatBatch best_v = FloatBatch(-INFINITY), best_i = FloatBatch(float(n));
    FloatBatch idx = FloatBatch::load_aligned(iota);
    const FloatBatch stepv = FloatBatch(float(L));
    const std::int64_t vec_end = n - n % L;
    for (std::int64_t i = 0; i < vec_end; i += L, idx += stepv) {
      const FloatBatch v = FloatBatch::load_unaligned(x + i);
      const auto better = v > best_v;
      best_v = xsimd::select(better, v, best_v);
      best_i = xsimd::select(better, idx, best_i);
    }
    alignas(64) float bv[kLanes], bi[kLanes];
    best_v.store_aligned(bv);
    best_i.store_aligned(bi);
    float v = -INFINITY;
    std::int64_t b = n;  // sentinel: nothing beat -inf yet
    for (std::size_t l = 0; l < kLanes; ++l) {
      const std::int64_t li = std::int64_t(bi[l]);
      if (li == n) continue;
      if (bv[l] > v || (bv[l] == v && li < b)) v = bv[l], b = li;
    }
    for (std::int64_t i = vec_end; i < n; ++i)
      if (x[i] > v) v = x[i], b = i;
    // Every value is -inf or NaN: the reference keeps index 0 (x[0] is -inf).
    return b == n ? 0 : b;
  }
#endif
  return reference::argmax(x, n);
}

// y[i] += x[i]
inline void add(float* y, const float* x, std::int64_t n) {
  std::int64_t i = 0;
#if FASTINFER_CPU_SIMD
  constexpr std::int64_t L = std::int64_t(kLanes);
  for (; i + L <= n; i += L)
    (FloatBatch::load_unaligned(y + i) + FloatBatch::load_unaligned(x + i)).store_unaligned(y + i);
#endif
  for (; i < n; ++i) y[i] += x[i];
}

}  // namespace fastinfer::cpu
FASTINFER_CPU_INTRINSIC_WARNINGS_ON
