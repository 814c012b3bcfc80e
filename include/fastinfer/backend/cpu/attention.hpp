// Attention over a paged, possibly quantized KV cache (kv::PagedKVView):
//
//   decode_attention   one query per sequence, a batch of different lengths,
//                      long sequences cut into key ranges by a DecodePlan and
//                      merged exactly (flash-decoding);
//   extend_attention   n new query tokens per sequence at its last n
//                      positions: causal (chunked prefill, draft verification)
//                      or with a CustomMask over the new tokens (token trees).
//
// Inner loop: keys and values are widened from their stored format to f32 in
// registers, 8 values at a time, and never copied out as f32 rows; Int8/FP8
// scales multiply the finished dot product (K) or the softmax weight (V), Int4
// applies scale and minimum per group of 8 values. The query heads that share
// a KV head are processed together so each key row is read once per group.
// Softmax is online, per tile of up to 64 keys (a tile may span blocks).
//
// OpenMP over work items: (sequence, KV head, key range) for decode,
// (sequence, KV head, run of queries) for extend; `threads` is the most the
// caller grants. Every output element is the work of one item with a fixed
// order of summation, so results do not depend on the thread count.
//
// The vectorised path needs AVX2 + FMA + F16C (fixed 8-float registers, as
// head sizes are multiples of 8, not of 16); without them these
// functions run the scalar reference of attention_reference.hpp.
//
// Tolerances against the scalar reference (tests/backend/cpu/test_attention.cpp):
// the stored values are identical, so the difference is f32 vs double
// summation only: 2e-5 absolute (values of order 1) for every quantization
// type. What each format costs against unquantized attention is stated per
// format in the same test file and in docs/kv_cache.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "fastinfer/backend/cpu/xsimd_compat.hpp"

#include "fastinfer/backend/cpu/arch.hpp"
#include "fastinfer/backend/cpu/attention_plan.hpp"
#include "fastinfer/backend/cpu/attention_reference.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"

#if FASTINFER_CPU_DISPATCH && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define FASTINFER_ATTENTION_AVX2 1
#else
#define FASTINFER_ATTENTION_AVX2 0
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastinfer::cpu {

#if FASTINFER_ATTENTION_AVX2
namespace attention_detail {

using A8 = xsimd::fma3<xsimd::avx2>;
using B8 = xsimd::batch<float, A8>;

// Values e..e+7 of a stored row, as f32, before the row's scale (Int8, FP8)
// and after its per-group scale and minimum (Int4).
template <typename Quant>
struct Widen;

template <>
struct Widen<kv::F32> {
  static B8 load(const std::uint8_t* row, const float*, int e, int) {
    return B8::load_unaligned(reinterpret_cast<const float*>(row) + e);
  }
  static constexpr bool kRowScale = false;
  static float scale(const float*) { return 1.0f; }
};
template <>
struct Widen<kv::F16> {
  static B8 load(const std::uint8_t* row, const float*, int e, int) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * e)));
  }
  static constexpr bool kRowScale = false;
  static float scale(const float*) { return 1.0f; }
};
template <>
struct Widen<kv::BF16> {
  static B8 load(const std::uint8_t* row, const float*, int e, int) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * e)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static constexpr bool kRowScale = false;
  static float scale(const float*) { return 1.0f; }
};
template <>
struct Widen<kv::Int8> {
  static B8 load(const std::uint8_t* row, const float*, int e, int) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + e))));
  }
  static constexpr bool kRowScale = true;
  static float scale(const float* p) { return p[0]; }
};
template <>
struct Widen<kv::FP8E4M3> {
  // Sign to bit 15, exponent and mantissa to bits 14..7: an f16 equal to the
  // e4m3 value times 2^-8, exactly (e4m3 subnormals land on f16 subnormals),
  // widened by F16C; the 2^8 rides on the row scale.
  static B8 load(const std::uint8_t* row, const float*, int e, int) {
    const __m128i x = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + e)));
    const __m128i sign = _mm_and_si128(_mm_slli_epi16(x, 8), _mm_set1_epi16(std::int16_t(0x8000)));
    const __m128i mag = _mm_slli_epi16(_mm_and_si128(x, _mm_set1_epi16(0x7f)), 7);
    return _mm256_cvtph_ps(_mm_or_si128(sign, mag));
  }
  static constexpr bool kRowScale = true;
  static float scale(const float* p) { return p[0] * 256.0f; }
};
template <>
struct Widen<kv::FP8E5M2> {
  // e5m2 is the top byte of an f16.
  static B8 load(const std::uint8_t* row, const float*, int e, int) {
    const __m128i h = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + e)));
    return _mm256_cvtph_ps(_mm_slli_epi16(h, 8));
  }
  static constexpr bool kRowScale = true;
  static float scale(const float* p) { return p[0]; }
};
template <>
struct Widen<kv::Int4> {
  // Byte i of a run of 8 holds value i (low nibble) and value i + 4 (high).
  // `group` is log2 of the group size, or 30 for one group per head.
  static B8 load(const std::uint8_t* row, const float* p, int e, int group) {
    std::int32_t packed;
    std::memcpy(&packed, row + e / 2, 4);
    const __m128i x = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(packed));
    const __m128i lo = _mm_and_si128(x, _mm_set1_epi32(0xf));
    const __m128i hi = _mm_srli_epi32(x, 4);
    const B8 q = _mm256_cvtepi32_ps(_mm256_set_m128i(hi, lo));
    const float* g = p + 2 * (e >> group);
    return xsimd::fma(q, B8(g[0]), B8(g[1]));
  }
  static constexpr bool kRowScale = false;
  static float scale(const float*) { return 1.0f; }
};

// Running softmax state of G query heads.
struct State {
  std::vector<float> m, l, o;  // [G], [G], [G * d]
  void reset(int g, int d) {
    m.assign(std::size_t(g), -std::numeric_limits<float>::infinity());
    l.assign(std::size_t(g), 0.0f);
    o.assign(std::size_t(g) * std::size_t(d), 0.0f);
  }
};

constexpr int kTile = 64;

// Scores of G query heads (q: G rows of d, already scaled) against one key row.
template <typename Quant, int G>
inline void dot_group(const std::uint8_t* row, const float* params, const float* q, int d, int group, float* s,
                      std::int64_t s_stride) {
  B8 acc[G];
  for (int g = 0; g < G; ++g) acc[g] = B8(0.0f);
  for (int e = 0; e < d; e += 8) {
    const B8 k = Widen<Quant>::load(row, params, e, group);
    for (int g = 0; g < G; ++g) acc[g] = xsimd::fma(k, B8::load_unaligned(q + g * d + e), acc[g]);
  }
  const float sc = Widen<Quant>::scale(params);
  for (int g = 0; g < G; ++g) s[g * s_stride] = xsimd_compat::reduce_add(acc[g]) * sc;
}

// The same for two key rows at once: each query chunk is loaded once for
// both, halving the loads that compete with the FMAs.
template <typename Quant, int G>
inline void dot_group2(const std::uint8_t* r0, const float* p0, const std::uint8_t* r1, const float* p1,
                       const float* q, int d, int group, float* s, std::int64_t s_stride) {
  B8 a0[G], a1[G];
  for (int g = 0; g < G; ++g) a0[g] = a1[g] = B8(0.0f);
  for (int e = 0; e < d; e += 8) {
    const B8 k0 = Widen<Quant>::load(r0, p0, e, group);
    const B8 k1 = Widen<Quant>::load(r1, p1, e, group);
    for (int g = 0; g < G; ++g) {
      const B8 qv = B8::load_unaligned(q + g * d + e);
      a0[g] = xsimd::fma(k0, qv, a0[g]);
      a1[g] = xsimd::fma(k1, qv, a1[g]);
    }
  }
  const float c0 = Widen<Quant>::scale(p0), c1 = Widen<Quant>::scale(p1);
  for (int g = 0; g < G; ++g) {
    s[g * s_stride] = xsimd_compat::reduce_add(a0[g]) * c0;
    s[g * s_stride + 1] = xsimd_compat::reduce_add(a1[g]) * c1;
  }
}

template <typename Quant>
inline void dot_heads2(const std::uint8_t* r0, const float* p0, const std::uint8_t* r1, const float* p1,
                       const float* q, int n_heads, int d, int group, float* s, std::int64_t s_stride) {
  int g = 0;
  for (; g + 4 <= n_heads; g += 4)
    dot_group2<Quant, 4>(r0, p0, r1, p1, q + g * d, d, group, s + g * s_stride, s_stride);
  switch (n_heads - g) {
    case 3: dot_group2<Quant, 3>(r0, p0, r1, p1, q + g * d, d, group, s + g * s_stride, s_stride); break;
    case 2: dot_group2<Quant, 2>(r0, p0, r1, p1, q + g * d, d, group, s + g * s_stride, s_stride); break;
    case 1: dot_group2<Quant, 1>(r0, p0, r1, p1, q + g * d, d, group, s + g * s_stride, s_stride); break;
    default: break;
  }
}

template <typename Quant>
inline void dot_heads(const std::uint8_t* row, const float* params, const float* q, int n_heads, int d, int group,
                      float* s, std::int64_t s_stride) {
  int g = 0;
  for (; g + 4 <= n_heads; g += 4) dot_group<Quant, 4>(row, params, q + g * d, d, group, s + g * s_stride, s_stride);
  switch (n_heads - g) {
    case 3: dot_group<Quant, 3>(row, params, q + g * d, d, group, s + g * s_stride, s_stride); break;
    case 2: dot_group<Quant, 2>(row, params, q + g * d, d, group, s + g * s_stride, s_stride); break;
    case 1: dot_group<Quant, 1>(row, params, q + g * d, d, group, s + g * s_stride, s_stride); break;
    default: break;
  }
}

// Scores of every query head against keys t0..t0+3 (4 x 2 heads) or
// t0..t0+7 (8 x 1 head): vectorised across keys, so a head of 8 or 16 values
// costs one or two FMAs per key and the horizontal sums of 8 (head, key)
// pairs are one transposing tree (arch_detail::reduce8), bit-equal to the
// xsimd::hadd of dot_group. The row scales multiply as a vector, as
// dot_group multiplies them one by one: the same bits.
template <typename Quant>
inline B8 key_scales(const float* const* params, int t0) {
  if constexpr (Widen<Quant>::kRowScale) {
    const __m128 c = _mm_setr_ps(Widen<Quant>::scale(params[t0]), Widen<Quant>::scale(params[t0 + 1]),
                                 Widen<Quant>::scale(params[t0 + 2]), Widen<Quant>::scale(params[t0 + 3]));
    return _mm256_set_m128(c, c);
  }
  else
    return B8(1.0f);
}

template <typename Quant>
inline void scores_4keys(const std::uint8_t* const* rows, const float* const* params, int t0, const float* q,
                         int n_heads, int d, int group, float* s, std::int64_t s_stride) {
  const std::uint8_t* r0 = rows[t0];
  const std::uint8_t* r1 = rows[t0 + 1];
  const std::uint8_t* r2 = rows[t0 + 2];
  const std::uint8_t* r3 = rows[t0 + 3];
  const float* p0 = params[t0];
  const float* p1 = params[t0 + 1];
  const float* p2 = params[t0 + 2];
  const float* p3 = params[t0 + 3];
  const B8 sc = key_scales<Quant>(params, t0);
  int g = 0;
  for (; g + 2 <= n_heads; g += 2) {
    // a_j: head g with key j, b_j: head g + 1 with key j.
    B8 a0(0.0f), b0(0.0f), a1(0.0f), b1(0.0f), a2(0.0f), b2(0.0f), a3(0.0f), b3(0.0f);
    for (int e = 0; e < d; e += 8) {
      const B8 qa = B8::load_unaligned(q + g * d + e), qb = B8::load_unaligned(q + (g + 1) * d + e);
      B8 k = Widen<Quant>::load(r0, p0, e, group);
      a0 = xsimd::fma(k, qa, a0);
      b0 = xsimd::fma(k, qb, b0);
      k = Widen<Quant>::load(r1, p1, e, group);
      a1 = xsimd::fma(k, qa, a1);
      b1 = xsimd::fma(k, qb, b1);
      k = Widen<Quant>::load(r2, p2, e, group);
      a2 = xsimd::fma(k, qa, a2);
      b2 = xsimd::fma(k, qb, b2);
      k = Widen<Quant>::load(r3, p3, e, group);
      a3 = xsimd::fma(k, qa, a3);
      b3 = xsimd::fma(k, qb, b3);
    }
    // [head g: keys 0..3 | head g + 1: keys 0..3]
    const __m256 r = _mm256_mul_ps(arch_detail::reduce8(a0, b0, a1, b1, a2, b2, a3, b3), sc);
    _mm_storeu_ps(s + g * s_stride + t0, _mm256_castps256_ps128(r));
    _mm_storeu_ps(s + (g + 1) * s_stride + t0, _mm256_extractf128_ps(r, 1));
  }
  if (g < n_heads) {
    B8 a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
    for (int e = 0; e < d; e += 8) {
      const B8 qa = B8::load_unaligned(q + g * d + e);
      a0 = xsimd::fma(Widen<Quant>::load(r0, p0, e, group), qa, a0);
      a1 = xsimd::fma(Widen<Quant>::load(r1, p1, e, group), qa, a1);
      a2 = xsimd::fma(Widen<Quant>::load(r2, p2, e, group), qa, a2);
      a3 = xsimd::fma(Widen<Quant>::load(r3, p3, e, group), qa, a3);
    }
    _mm_storeu_ps(s + g * s_stride + t0,
                  _mm_mul_ps(arch_detail::reduce4(a0, a1, a2, a3), _mm256_castps256_ps128(sc)));
  }
}

// Scores of n keys (rows, params) for every query head into s[g][t].
template <typename Quant>
inline void scores_tile(const std::uint8_t* const* rows, const float* const* params, int n, const float* q,
                        int n_heads, int d, int group, float* s, std::int64_t s_stride) {
  int t = 0;
  for (; t + 4 <= n; t += 4) scores_4keys<Quant>(rows, params, t, q, n_heads, d, group, s, s_stride);
  for (; t + 2 <= n; t += 2)
    dot_heads2<Quant>(rows[t], params[t], rows[t + 1], params[t + 1], q, n_heads, d, group, s + t, s_stride);
  if (t < n) dot_heads<Quant>(rows[t], params[t], q, n_heads, d, group, s + t, s_stride);
}

// o[g] = o[g] * alpha[g] + sum_t p[g][t] * v_t for G heads, 8 columns at a
// time so that the G accumulators stay in registers across the tile. Rows
// come as pointers: a tile may span blocks.
template <typename Quant, int G>
inline void accumulate_group(const std::uint8_t* const* rows, const float* const* params, int n, const float* p,
                             std::int64_t p_stride, const float* alpha, float* o, int d, int group) {
  int e = 0;
  // 16 columns per pass: each broadcast softmax weight serves two FMAs.
  for (; e + 16 <= d; e += 16) {
    B8 lo[G], hi[G];
    for (int g = 0; g < G; ++g) {
      lo[g] = B8::load_unaligned(o + g * d + e) * B8(alpha[g]);
      hi[g] = B8::load_unaligned(o + g * d + e + 8) * B8(alpha[g]);
    }
    for (int t = 0; t < n; ++t) {
      const B8 v0 = Widen<Quant>::load(rows[t], params[t], e, group);
      const B8 v1 = Widen<Quant>::load(rows[t], params[t], e + 8, group);
      for (int g = 0; g < G; ++g) {
        const B8 w(p[g * p_stride + t]);
        lo[g] = xsimd::fma(v0, w, lo[g]);
        hi[g] = xsimd::fma(v1, w, hi[g]);
      }
    }
    for (int g = 0; g < G; ++g) {
      lo[g].store_unaligned(o + g * d + e);
      hi[g].store_unaligned(o + g * d + e + 8);
    }
  }
  for (; e < d; e += 8) {
    B8 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = B8::load_unaligned(o + g * d + e) * B8(alpha[g]);
    for (int t = 0; t < n; ++t) {
      const B8 v = Widen<Quant>::load(rows[t], params[t], e, group);
      for (int g = 0; g < G; ++g) acc[g] = xsimd::fma(v, B8(p[g * p_stride + t]), acc[g]);
    }
    for (int g = 0; g < G; ++g) acc[g].store_unaligned(o + g * d + e);
  }
}

template <typename Quant>
inline void accumulate_heads(const std::uint8_t* const* rows, const float* const* params, int n, const float* p,
                             std::int64_t p_stride, const float* alpha, float* o, int n_heads, int d, int group) {
  int g = 0;
  for (; g + 4 <= n_heads; g += 4)
    accumulate_group<Quant, 4>(rows, params, n, p + g * p_stride, p_stride, alpha + g, o + g * d, d, group);
  const float* pg = p + g * p_stride;
  float* og = o + g * d;
  switch (n_heads - g) {
    case 3: accumulate_group<Quant, 3>(rows, params, n, pg, p_stride, alpha + g, og, d, group); break;
    case 2: accumulate_group<Quant, 2>(rows, params, n, pg, p_stride, alpha + g, og, d, group); break;
    case 1: accumulate_group<Quant, 1>(rows, params, n, pg, p_stride, alpha + g, og, d, group); break;
    default: break;
  }
}

struct AllVisible {
  static constexpr bool kAll = true;
  bool operator()(std::int64_t) const { return true; }
};
struct MaskVisible {
  static constexpr bool kAll = false;
  const std::uint8_t* row;  // mask row of this query over the new tokens
  std::int64_t first_new;
  bool operator()(std::int64_t p) const { return p < first_new || row[p - first_new] != 0; }
};

// Folds keys [begin, end) of sequence b, KV head h into the state of the G
// query heads q (scaled, G rows of d).
template <typename Quant, typename Visible>
void attend_range(const kv::PagedKVView<Quant>& kv, std::int32_t b, std::int32_t h, const float* q, int n_heads,
                  std::int64_t begin, std::int64_t end, const Visible& visible, State& st) {
  const int d = kv.head_dim;
  // Groups are 32 values or the whole head (kv_quant.hpp): a shift, not a
  // division, finds a value's group in the inner loop.
  const int group = kv::QuantTraits<Quant>::group_size(d) == 32 && d > 32 ? 5 : 30;
  const int ppr = kv.params_per_row;
  alignas(32) float s[8 * kTile];  // [g][t], rows padded to kTile
  alignas(32) float vs[kTile];
  float alpha[64];
  std::vector<float> big;  // more than 8 heads per KV head: spill the scores
  float* sc = s;
  if (n_heads > 8) {
    big.resize(std::size_t(n_heads) * kTile);
    sc = big.data();
  }
  float* alpha_p = alpha;
  std::vector<float> big_alpha;
  if (n_heads > 64) {
    big_alpha.resize(std::size_t(n_heads));
    alpha_p = big_alpha.data();
  }
  // Row pointers of one tile, which may span several blocks: small blocks
  // (16 tokens) then cost no more per-tile work than one long run.
  const std::uint8_t* krow[kTile];
  const std::uint8_t* vrow[kTile];
  const float* kpar[kTile];
  const float* vpar[kTile];
  for (std::int64_t pos = begin; pos < end;) {
    const int n = int(std::min<std::int64_t>(end - pos, kTile));
    for (int t = 0; t < n;) {
      const std::int64_t p = pos + t, off = p % kv.block_size;
      const BlockId blk = kv.block(b, p / kv.block_size);
      const int run = int(std::min<std::int64_t>(n - t, kv.block_size - off));
      const std::uint8_t* k0 = kv.k_row(blk, h, off);
      const std::uint8_t* v0 = kv.v_row(blk, h, off);
      const float* kp0 = kv.k_param(blk, h, off);
      const float* vp0 = kv.v_param(blk, h, off);
      for (int r = 0; r < run; ++r, ++t) {
        krow[t] = k0 + r * kv.row_bytes;
        vrow[t] = v0 + r * kv.row_bytes;
        kpar[t] = kp0 + r * ppr;
        vpar[t] = vp0 + r * ppr;
      }
    }
    scores_tile<Quant>(krow, kpar, n, q, n_heads, d, group, sc, kTile);
    if constexpr (!Visible::kAll) {
      for (int t = 0; t < n; ++t)
        if (!visible(pos + t))
          for (int g = 0; g < n_heads; ++g) sc[g * kTile + t] = -std::numeric_limits<float>::infinity();
    }
    bool any = false;
    for (int g = 0; g < n_heads; ++g) {
      float* row = sc + g * kTile;
      // The maximum is exact in any order: vectorised, it changes no bit.
      float mx = st.m[std::size_t(g)];
      {
        int t = 0;
        if (n >= 8) {
          B8 vm = B8::load_unaligned(row);
          for (t = 8; t + 8 <= n; t += 8) vm = xsimd::max(vm, B8::load_unaligned(row + t));
          alignas(32) float lanes[8];
          vm.store_aligned(lanes);
          for (float v : lanes) mx = std::max(mx, v);
        }
        for (; t < n; ++t) mx = std::max(mx, row[t]);
      }
      if (mx == -std::numeric_limits<float>::infinity()) {
        alpha_p[g] = 1.0f;
        for (int t = 0; t < n; ++t) row[t] = 0.0f;
        continue;
      }
      any = true;
      alpha_p[g] = std::exp(st.m[std::size_t(g)] - mx);
      st.m[std::size_t(g)] = mx;
      const B8 vmx(mx);
      float sum = 0.0f;
      int t = 0;
      for (; t + 8 <= n; t += 8) {
        const B8 p = xsimd::exp(B8::load_unaligned(row + t) - vmx);
        p.store_unaligned(row + t);
        sum += xsimd_compat::reduce_add(p);
      }
      for (; t < n; ++t) {
        row[t] = std::exp(row[t] - mx);
        sum += row[t];
      }
      st.l[std::size_t(g)] = st.l[std::size_t(g)] * alpha_p[g] + sum;
    }
    if (any) {
      if constexpr (Widen<Quant>::kRowScale) {
        // Int8 / FP8: the row scale of V multiplies the softmax weight.
        for (int t = 0; t < n; ++t) vs[t] = Widen<Quant>::scale(vpar[t]);
        for (int g = 0; g < n_heads; ++g)
          for (int t = 0; t < n; ++t) sc[g * kTile + t] *= vs[t];
      }
      accumulate_heads<Quant>(vrow, vpar, n, sc, kTile, alpha_p, st.o.data(), n_heads, d, group);
    }
    pos += n;
  }
}

// The G query heads of KV head h, scaled by sm_scale (and rotated back by
// `shift` positions for the sinks).
inline void load_query(const float* q, int n_heads, int d, float sm_scale, std::int64_t shift,
                       const kv::RopeSpec& rope, float* dst) {
  for (int g = 0; g < n_heads; ++g) {
    float* r = dst + g * d;
    std::memcpy(r, q + g * d, sizeof(float) * std::size_t(d));
    rope_rotate(r, d, -shift, rope);
    for (int j = 0; j < d; ++j) r[j] *= sm_scale;
  }
}

inline void finish(const State& st, int n_heads, int d, float* out) {
  for (int g = 0; g < n_heads; ++g) {
    const float l = st.l[std::size_t(g)];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int j = 0; j < d; ++j) out[g * d + j] = st.o[std::size_t(g) * std::size_t(d) + std::size_t(j)] * inv;
  }
}

// Threads worth waking for `items` work items holding `macs` multiply-adds
// in all: an OpenMP hand-off costs a few microseconds, more than a whole
// decode step of a tiny model (stories260K: 8 heads of 8 values), so below
// ~64k multiply-adds per thread the caller's thread works alone.
inline int team_size(std::int64_t items, int threads, std::int64_t macs) {
  constexpr std::int64_t kMacsPerThread = 64 * 1024;
  const std::int64_t by_work = std::max<std::int64_t>(1, macs / kMacsPerThread);
  return int(std::max<std::int64_t>(1, std::min<std::int64_t>({threads, items, by_work})));
}

}  // namespace attention_detail
#endif  // FASTINFER_ATTENTION_AVX2

inline void check_heads(int n_q_heads, std::int32_t n_kv_heads) {
  FASTINFER_CHECK(n_q_heads > 0 && n_kv_heads > 0 && n_q_heads % n_kv_heads == 0, InvalidArgument,
                  "attention: ", n_q_heads, " query heads cannot share ", n_kv_heads, " KV heads evenly");
}

// q, out: [batch][n_q_heads][head_dim]; the query of sequence b sits at its
// last position. sm_scale 0 means 1/sqrt(head_dim).
template <typename Quant>
void decode_attention(const kv::PagedKVView<Quant>& kv, const float* q, float* out, int n_q_heads,
                      const DecodePlan& plan, int threads = 1, float sm_scale = 0.0f) {
  check_heads(n_q_heads, kv.n_kv_heads);
  FASTINFER_CHECK(std::int32_t(plan.ranges.size()) == kv.batch && plan.n_kv_heads == kv.n_kv_heads, InvalidArgument,
                  "decode_attention: the plan was made for ", plan.ranges.size(), " sequences and ", plan.n_kv_heads,
                  " KV heads, the view has ", kv.batch, " and ", kv.n_kv_heads);
  const int d = kv.head_dim;
  if (sm_scale == 0.0f) sm_scale = 1.0f / std::sqrt(float(d));
#if FASTINFER_ATTENTION_AVX2
  namespace ad = attention_detail;
  const int G = n_q_heads / kv.n_kv_heads;
  const std::int64_t n_items = std::int64_t(plan.items.size());
  // Partial states of every item: m[G], l[G], o[G][d].
  const std::int64_t stride = std::int64_t(G) * (d + 2);
  std::vector<float> part(std::size_t(n_items * stride));
  std::int64_t keys = 0;
  for (const auto& it : plan.items) {
    // A plan made for other lengths would read past a sequence.
    FASTINFER_CHECK(it.seq >= 0 && it.seq < kv.batch && it.end <= kv.length(it.seq), InvalidArgument,
                    "decode_attention: the plan reads keys up to ", it.end, " of sequence ", it.seq,
                    ", which the view does not have");
    keys += it.end - it.begin;
  }
  const std::int64_t macs = keys * 2 * G * d;
#pragma omp parallel num_threads(ad::team_size(n_items, threads, macs))
  {
    ad::State st;
    std::vector<float> qs(std::size_t(G) * std::size_t(d));
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t i = 0; i < n_items; ++i) {
      const auto& it = plan.items[std::size_t(i)];
      const std::int64_t pos = kv.length(it.seq) - 1;
      ad::load_query(q + (std::int64_t(it.seq) * n_q_heads + std::int64_t(it.kv_head) * G) * d, G, d, sm_scale,
                     it.sink ? kv.sink_shift(pos) : 0, kv.rope, qs.data());
      st.reset(G, d);
      ad::attend_range(kv, it.seq, it.kv_head, qs.data(), G, it.begin, it.end, ad::AllVisible{}, st);
      float* dst = part.data() + i * stride;
      std::copy(st.m.begin(), st.m.end(), dst);
      std::copy(st.l.begin(), st.l.end(), dst + G);
      std::copy(st.o.begin(), st.o.end(), dst + 2 * G);
    }
  }
  // Merge the ranges of each (sequence, query head) in plan order.
  const std::int64_t n_out = std::int64_t(kv.batch) * n_q_heads;
  const std::int64_t merge_macs =
      n_out * d * std::int64_t(plan.items.size()) / std::max<std::int64_t>(1, std::int64_t(kv.batch) * kv.n_kv_heads);
#pragma omp parallel for num_threads(ad::team_size(n_out, threads, merge_macs))
  for (std::int64_t k = 0; k < n_out; ++k) {
    const std::int32_t b = std::int32_t(k / n_q_heads);
    const int hq = int(k % n_q_heads), h = hq / G, g = hq % G;
    const int r = plan.ranges[std::size_t(b)];
    float m[256], l[256];
    std::vector<float> mv, lv;
    float* mp = m;
    float* lp = l;
    if (r > 256) {
      mv.resize(std::size_t(r));
      lv.resize(std::size_t(r));
      mp = mv.data();
      lp = lv.data();
    }
    const float* base = part.data() + (plan.first[std::size_t(b)] + std::int64_t(h) * r) * stride;
    for (int i = 0; i < r; ++i) {
      mp[i] = base[i * stride + g];
      lp[i] = base[i * stride + G + g];
    }
    merge_states(r, mp, lp, base + 2 * G + std::int64_t(g) * d, stride, d, out + k * d);
  }
#else
  (void)plan;
  (void)threads;
  reference::decode_attention(kv, q, out, n_q_heads, sm_scale);
#endif
}

// decode_attention with a plan made here.
template <typename Quant>
void decode_attention(const kv::PagedKVView<Quant>& kv, const float* q, float* out, int n_q_heads, int threads = 1,
                      float sm_scale = 0.0f) {
  decode_attention(kv, q, out, n_q_heads, plan_decode(kv, threads), threads, sm_scale);
}

// q, out: [total new tokens][n_q_heads][head_dim]; token i of sequence b is
// row qo_indptr[b] + i at position length(b) - n_b + i. Causal, or `mask`.
template <typename Quant>
void extend_attention(const kv::PagedKVView<Quant>& kv, const float* q, const std::int32_t* qo_indptr, float* out,
                      int n_q_heads, int threads = 1, const CustomMask* mask = nullptr, float sm_scale = 0.0f) {
  check_heads(n_q_heads, kv.n_kv_heads);
  for (std::int32_t b = 0; b < kv.batch; ++b) {
    const std::int64_t n = qo_indptr[b + 1] - qo_indptr[b];
    FASTINFER_CHECK(n >= 0 && n <= kv.length(b), InvalidArgument, "extend_attention: sequence ", b, " has ", n,
                    " new tokens but length ", kv.length(b));
  }
  const int d = kv.head_dim;
  if (sm_scale == 0.0f) sm_scale = 1.0f / std::sqrt(float(d));
#if FASTINFER_ATTENTION_AVX2
  namespace ad = attention_detail;
  const int G = n_q_heads / kv.n_kv_heads;
  // Work items: runs of up to 16 queries of one (sequence, KV head).
  constexpr std::int64_t kRun = 16;
  struct Item {
    std::int32_t seq, head;
    std::int64_t q0, q1;
  };
  std::vector<Item> items;
  for (std::int32_t b = 0; b < kv.batch; ++b)
    for (std::int32_t h = 0; h < kv.n_kv_heads; ++h)
      for (std::int64_t i = qo_indptr[b]; i < qo_indptr[b + 1]; i += kRun)
        items.push_back({b, h, i, std::min<std::int64_t>(i + kRun, qo_indptr[b + 1])});
  const auto moff = mask ? mask_offsets(qo_indptr, kv.batch) : std::vector<std::int64_t>{};
  const std::int64_t n_items = std::int64_t(items.size());
  std::int64_t macs = 0;  // causal: about half of length x new tokens
  for (std::int32_t b = 0; b < kv.batch; ++b)
    macs += (qo_indptr[b + 1] - qo_indptr[b]) * kv.length(b) * n_q_heads * d;
#pragma omp parallel num_threads(ad::team_size(n_items, threads, macs))
  {
    ad::State st;
    std::vector<float> qs(std::size_t(G) * std::size_t(d));
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t w = 0; w < n_items; ++w) {
      const Item& it = items[std::size_t(w)];
      const std::int64_t len = kv.length(it.seq);
      const std::int64_t n = qo_indptr[it.seq + 1] - qo_indptr[it.seq];
      const std::int64_t first_new = len - n;
      for (std::int64_t row = it.q0; row < it.q1; ++row) {
        const std::int64_t i = row - qo_indptr[it.seq];
        const std::int64_t pos = first_new + i;
        const std::int64_t key_end = mask ? len : pos + 1;
        const std::int64_t sink_end = kv.sink_end(pos);
        const std::int64_t win_begin = kv.window_begin(pos);
        const float* qrow = q + (row * n_q_heads + std::int64_t(it.head) * G) * d;
        st.reset(G, d);
        auto run = [&](const auto& vis) {
          if (sink_end > 0) {
            ad::load_query(qrow, G, d, sm_scale, kv.sink_shift(pos), kv.rope, qs.data());
            ad::attend_range(kv, it.seq, it.head, qs.data(), G, 0, std::min(sink_end, key_end), vis, st);
          }
          ad::load_query(qrow, G, d, sm_scale, 0, kv.rope, qs.data());
          ad::attend_range(kv, it.seq, it.head, qs.data(), G, win_begin, key_end, vis, st);
        };
        if (mask)
          run(ad::MaskVisible{mask->data + moff[std::size_t(it.seq)] + i * n, first_new});
        else
          run(ad::AllVisible{});
        ad::finish(st, G, d, out + (row * n_q_heads + std::int64_t(it.head) * G) * d);
      }
    }
  }
#else
  (void)threads;
  reference::paged_attention(kv, q, qo_indptr, out, n_q_heads, mask, sm_scale);
#endif
}

}  // namespace fastinfer::cpu
