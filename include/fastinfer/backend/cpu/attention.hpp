// Attention over a paged, possibly quantized KV cache (kv::PagedKVView):
//
//   decode_attention   one query per sequence, a batch of different lengths,
//                      long sequences cut into key ranges by a DecodePlan and
//                      merged exactly (flash-decoding);
//   extend_attention   n new query tokens per sequence at its last n
//                      positions: causal (chunked prefill, draft verification)
//                      or with a CustomMask over the new tokens (token trees).
//
// This file is the driver: work items, OpenMP, the merge. The inner kernel,
// per instruction set, chosen at run time by the CPU level (cpu_level.hpp,
// read once per call) and the head size (attention_kernel()):
//   attention_avx512.hpp    avx512 level, head size a multiple of 16
//   attention_avx2.hpp      avx2 level; avx512 level with a head size that is
//                           a multiple of 8 only (8, 24, 72)
//   attention_reference.hpp scalar level (and non-x86 builds): the scalar
//                           reference, in double
// Both vector kernels are attention_kernel_generic.hpp compiled in their own
// target region, so a program built for x86-64 or x86-64-v3 still runs the
// AVX-512 kernel on a CPU that has it.
//
// Inner loop: keys and values are widened from their stored format to f32 in
// registers, one register (8 or 16 values) at a time, and never copied out
// as f32 rows; Int8/FP8 scales multiply the finished dot product (K) or the
// softmax weight (V), Int4 applies scale and minimum per group. The query
// heads that share a KV head are processed together so each key row is read
// once per group. Softmax is online, per tile of up to 64 keys (a tile may
// span blocks).
//
// OpenMP over work items: (sequence, KV head, key range) for decode,
// (sequence, KV head, run of queries) for extend; `threads` is the most the
// caller grants. Every output element is the work of one item with a fixed
// order of summation (set by the level, the head size and the plan), so
// results do not depend on the thread count, nor on how many sequences or
// queries share the call.
//
// Tolerances against the scalar reference (tests/backend/cpu/test_attention.cpp,
// at every level the host supports): the stored values are identical, so the
// difference is f32 vs double summation only: 2e-5 absolute (values of order
// 1) for every quantization type. What each format costs against unquantized
// attention is stated per format in the same test file and in docs/kv_cache.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "fastinfer/backend/cpu/attention_avx2.hpp"
#include "fastinfer/backend/cpu/attention_avx512.hpp"
#include "fastinfer/backend/cpu/attention_plan.hpp"
#include "fastinfer/backend/cpu/attention_reference.hpp"
#include "fastinfer/backend/cpu/attention_state.hpp"
#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastinfer::cpu {

// The kernel sets of attention.
enum class AttentionKernel { reference, avx2, avx512 };

// The kernel that runs attention of head size `head_dim` at `level`.
inline AttentionKernel attention_kernel(CpuLevel level, int head_dim) {
#if FASTINFER_CPU_DISPATCH
  if (level >= CpuLevel::avx512 && head_dim % attention_detail::kAvx512Lanes == 0) return AttentionKernel::avx512;
  if (level >= CpuLevel::avx2 && head_dim % 8 == 0) return AttentionKernel::avx2;
#else
  (void)level;
  (void)head_dim;
#endif
  return AttentionKernel::reference;
}

// Its name, for logs, stats and benchmarks: "avx512", "avx2" or "reference".
inline const char* attention_kernel_isa(CpuLevel level, int head_dim) {
  switch (attention_kernel(level, head_dim)) {
    case AttentionKernel::avx512: return "avx512";
    case AttentionKernel::avx2: return "avx2";
    case AttentionKernel::reference: break;
  }
  return "reference";
}

namespace attention_detail {

// Folds keys [begin, end) into `st` with the vector kernel `kernel`.
template <typename Quant, typename Visible>
void attend_range(AttentionKernel kernel, const kv::PagedKVView<Quant>& kv, std::int32_t b, std::int32_t h,
                  const float* q, int n_heads, std::int64_t begin, std::int64_t end, const Visible& visible,
                  State& st) {
#if FASTINFER_CPU_DISPATCH
  if (kernel == AttentionKernel::avx512)
    avx512::attention::attend_range(kv, b, h, q, n_heads, begin, end, visible, st);
  else
    avx2::attention::attend_range(kv, b, h, q, n_heads, begin, end, visible, st);
#else
  (void)kernel, (void)kv, (void)b, (void)h, (void)q, (void)n_heads, (void)begin, (void)end, (void)visible, (void)st;
#endif
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
  const AttentionKernel kernel = attention_kernel(cpu_level(), d);  // once, before the threads start
  namespace ad = attention_detail;
  const int G = n_q_heads / kv.n_kv_heads;
  const std::int64_t n_items = std::int64_t(plan.items.size());
  // Partial states of every item: m[G], l[G], o[G][d].
  const std::int64_t stride = std::int64_t(G) * (d + 2);
  std::int64_t keys = 0;
  for (const auto& it : plan.items) {
    // A plan made for other lengths would read past a sequence.
    FASTINFER_CHECK(it.seq >= 0 && it.seq < kv.batch && it.end <= kv.length(it.seq), InvalidArgument,
                    "decode_attention: the plan reads keys up to ", it.end, " of sequence ", it.seq,
                    ", which the view does not have");
    keys += it.end - it.begin;
  }
  // The reference needs no plan, but a bad one is refused at every level.
  if (kernel == AttentionKernel::reference) {
    reference::decode_attention(kv, q, out, n_q_heads, sm_scale);
    return;
  }
  std::vector<float> part(std::size_t(n_items * stride));
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
      ad::attend_range(kernel, kv, it.seq, it.kv_head, qs.data(), G, it.begin, it.end, ad::AllVisible{}, st);
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
  const AttentionKernel kernel = attention_kernel(cpu_level(), d);  // once, before the threads start
  if (kernel == AttentionKernel::reference) {
    reference::paged_attention(kv, q, qo_indptr, out, n_q_heads, mask, sm_scale);
    return;
  }
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
            ad::attend_range(kernel, kv, it.seq, it.head, qs.data(), G, 0, std::min(sink_end, key_end), vis, st);
          }
          ad::load_query(qrow, G, d, sm_scale, 0, kv.rope, qs.data());
          ad::attend_range(kernel, kv, it.seq, it.head, qs.data(), G, win_begin, key_end, vis, st);
        };
        if (mask)
          run(ad::MaskVisible{mask->data + moff[std::size_t(it.seq)] + i * n, first_new});
        else
          run(ad::AllVisible{});
        ad::finish(st, G, d, out + (row * n_q_heads + std::int64_t(it.head) * G) * d);
      }
    }
  }
}

}  // namespace fastinfer::cpu
