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
template <typename Quant>
void attend_range(AttentionKernel kernel, const kv::PagedKVView<Quant>& kv, std::int32_t b, std::int32_t h,
                  const float* q, int n_heads, int rows, std::int64_t begin, std::int64_t end,
                  const Visibility& visible, State& st) {
#if FASTINFER_CPU_DISPATCH
  if (kernel == AttentionKernel::avx512)
    avx512::attention::attend_range(kv, b, h, q, n_heads, rows, begin, end, visible, st);
  else
    avx2::attention::attend_range(kv, b, h, q, n_heads, rows, begin, end, visible, st);
#else
  (void)kernel, (void)kv, (void)b, (void)h, (void)q, (void)n_heads, (void)rows, (void)begin, (void)end,
      (void)visible, (void)st;
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

// A partial state of n heads as the merge reads it: m[n], l[n], o[n][d].
inline std::int64_t partial_stride(int n_heads, int d) { return std::int64_t(n_heads) * (d + 2); }

// Folds keys [begin, end) into a fresh state and stores it as a partial at
// dst: the one step decode's plan items and extend's queries share.
template <typename Quant>
void attend_chunk(AttentionKernel kernel, const kv::PagedKVView<Quant>& kv, std::int32_t b, std::int32_t h,
                  const float* q, int n_heads, int rows, std::int64_t begin, std::int64_t end,
                  const Visibility& visible, State& st, float* dst) {
  st.reset(n_heads, kv.head_dim);
  attend_range(kernel, kv, b, h, q, n_heads, rows, begin, end, visible, st);
  std::copy(st.m.begin(), st.m.end(), dst);
  std::copy(st.l.begin(), st.l.end(), dst + n_heads);
  std::copy(st.o.begin(), st.o.end(), dst + 2 * n_heads);
}

// out[d] = head g's r partials (stride apart, n_heads each) merged in order.
inline void merge_partials(const float* base, int r, std::int64_t stride, int n_heads, int g, int d, float* out) {
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
  for (int i = 0; i < r; ++i) {
    mp[i] = base[i * stride + g];
    lp[i] = base[i * stride + n_heads + g];
  }
  merge_states(r, mp, lp, base + 2 * n_heads + std::int64_t(g) * d, stride, d, out);
}

// What one thread keeps between the queries it attends.
struct QueryScratch {
  State st;
  std::vector<float> qs;    // the scaled (rotated) query rows
  std::vector<float> part;  // the partials of their chunks
};

// The attention of `rows` consecutive queries of sequence b, KV head h
// (G heads each, q: [rows][n_q_heads][d] from the first one's KV head h,
// row stride `q_stride`), the first at position `pos`, all seeing keys up to
// key_end in the same chunks (the caller groups them so) and what `visible`
// allows: sinks then the window, cut by for_each_key_chunk, each chunk
// attend_chunk, merged in order. Decode is its one-row case; a row's bits
// do not depend on the other rows (attention_kernel_generic.hpp).
template <typename Quant>
void attend_queries(AttentionKernel kernel, const kv::PagedKVView<Quant>& kv, std::int32_t b, std::int32_t h,
                    const float* q, std::int64_t q_stride, int rows, int G, float sm_scale, std::int64_t pos,
                    std::int64_t key_end, const Visibility& visible, QueryScratch& w, float* out,
                    std::int64_t out_stride) {
  const int d = kv.head_dim, n = rows * G;
  const std::int64_t stride = partial_stride(n, d);
  const std::int64_t sink_end = std::min(kv.sink_end(pos), key_end), win_begin = kv.window_begin(pos);
  const std::int64_t n_chunks =
      (sink_end + kKeyChunk - 1) / kKeyChunk + (key_end - win_begin + kKeyChunk - 1) / kKeyChunk;
  if (std::int64_t(w.part.size()) < n_chunks * stride) w.part.resize(std::size_t(n_chunks * stride));
  w.qs.resize(std::size_t(n) * std::size_t(d));
  auto load = [&](std::int64_t shift) {
    for (int r = 0; r < rows; ++r)
      load_query(q + r * q_stride, G, d, sm_scale, shift, kv.rope, w.qs.data() + std::int64_t(r) * G * d);
  };
  int c = 0;
  auto chunk = [&](std::int64_t x0, std::int64_t x1) {
    attend_chunk(kernel, kv, b, h, w.qs.data(), n, rows, x0, x1, visible, w.st, w.part.data() + c++ * stride);
  };
  if (sink_end > 0) {
    load(kv.sink_shift(pos));
    for_each_key_chunk(0, sink_end, kKeyChunk, chunk);
  }
  load(0);
  for_each_key_chunk(win_begin, key_end, kKeyChunk, chunk);
  for (int r = 0; r < rows; ++r)
    for (int g = 0; g < G; ++g)
      merge_partials(w.part.data(), c, stride, n, r * G + g, d, out + r * out_stride + std::int64_t(g) * d);
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
  const std::int64_t stride = ad::partial_stride(G, d);
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
  [[maybe_unused]] const std::int64_t macs = keys * 2 * G * d;  // read only by the omp pragma
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
      ad::attend_chunk(kernel, kv, it.seq, it.kv_head, qs.data(), G, 1, it.begin, it.end, ad::causal_rows(pos), st,
                       part.data() + i * stride);
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
    ad::merge_partials(part.data() + (plan.first[std::size_t(b)] + std::int64_t(h) * r) * stride, r, stride, G, g, d,
                       out + k * d);
  }
}

// decode_attention with a plan made here; at the scalar level no plan (the
// reference reads every key in order, and a plan allocates).
template <typename Quant>
void decode_attention(const kv::PagedKVView<Quant>& kv, const float* q, float* out, int n_q_heads, int threads = 1,
                      float sm_scale = 0.0f) {
  if (attention_kernel(cpu_level(), kv.head_dim) == AttentionKernel::reference)
    return reference::decode_attention(kv, q, out, n_q_heads, sm_scale);
  decode_attention(kv, q, out, n_q_heads, plan_decode(kv), threads, sm_scale);
}

namespace attention_detail {

// Most queries an extend work item attends together: each K/V tile is
// widened once for all of them (their G heads each).
inline constexpr int kQueryBlock = 16;

// extend_attention with blocks of at most `block` queries: the bits do not
// depend on it (tests vary it; the library uses kQueryBlock).
template <typename Quant>
void extend_blocked(const kv::PagedKVView<Quant>& kv, const float* q, const std::int32_t* qo_indptr, float* out,
                    int n_q_heads, int threads, const CustomMask* mask, float sm_scale, int block) {
  check_heads(n_q_heads, kv.n_kv_heads);
  FASTINFER_CHECK(block >= 1, InvalidArgument, "extend_attention: a block of ", block, " queries");
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
  const int G = n_q_heads / kv.n_kv_heads;
  // Work items: up to `block` queries of one (sequence, KV head) whose keys
  // fall in the same chunks. A token tree's queries all read keys up to the
  // sequence's end; causal queries share chunks while pos / kKeyChunk does;
  // under a sliding window each query has its own.
  struct Item {
    std::int32_t seq, head;
    std::int64_t q0, q1;
  };
  std::vector<Item> items;
  for (std::int32_t b = 0; b < kv.batch; ++b) {
    const std::int64_t first_new = kv.length(b) - (qo_indptr[b + 1] - qo_indptr[b]);
    // At most 32 query rows (heads) in a block: the kernel's scores stay on
    // its stack.
    const std::int64_t most = kv.window > 0 ? 1 : std::max(1, std::min(block, 32 / G));
    for (std::int64_t i = qo_indptr[b]; i < qo_indptr[b + 1];) {
      std::int64_t j = std::min<std::int64_t>(i + most, qo_indptr[b + 1]);
      if (!mask) {
        const std::int64_t pos = first_new + (i - qo_indptr[b]);
        j = std::min(j, i + (pos / kKeyChunk + 1) * kKeyChunk - pos);
      }
      for (std::int32_t h = 0; h < kv.n_kv_heads; ++h) items.push_back({b, h, i, j});
      i = j;
    }
  }
  const auto moff = mask ? mask_offsets(qo_indptr, kv.batch) : std::vector<std::int64_t>{};
  const std::int64_t n_items = std::int64_t(items.size());
  std::int64_t macs = 0;  // causal: about half of length x new tokens
  for (std::int32_t b = 0; b < kv.batch; ++b)
    macs += (qo_indptr[b + 1] - qo_indptr[b]) * kv.length(b) * n_q_heads * d;
  const std::int64_t row = std::int64_t(n_q_heads) * d;
#pragma omp parallel num_threads(team_size(n_items, threads, macs))
  {
    QueryScratch w;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t k = 0; k < n_items; ++k) {
      const Item& it = items[std::size_t(k)];
      const std::int64_t len = kv.length(it.seq);
      const std::int64_t n = qo_indptr[it.seq + 1] - qo_indptr[it.seq];
      const std::int64_t first_new = len - n, i0 = it.q0 - qo_indptr[it.seq];
      const std::int64_t pos = first_new + i0;
      const int rows = int(it.q1 - it.q0);
      const std::int64_t at = it.q0 * row + std::int64_t(it.head) * G * d;
      if (mask)
        attend_queries(kernel, kv, it.seq, it.head, q + at, row, rows, G, sm_scale, pos, len,
                       tree_rows(mask->data + moff[std::size_t(it.seq)], n, i0, first_new), w, out + at, row);
      else
        attend_queries(kernel, kv, it.seq, it.head, q + at, row, rows, G, sm_scale, pos, pos + rows,
                       causal_rows(pos), w, out + at, row);
    }
  }
}

}  // namespace attention_detail

// q, out: [total new tokens][n_q_heads][head_dim]; token i of sequence b is
// row qo_indptr[b] + i at position length(b) - n_b + i. Causal, or `mask`.
// A query gets the bits decode_attention gives it at its position (same
// chunks, same merge), whatever the other queries and sequences of the call.
template <typename Quant>
void extend_attention(const kv::PagedKVView<Quant>& kv, const float* q, const std::int32_t* qo_indptr, float* out,
                      int n_q_heads, int threads = 1, const CustomMask* mask = nullptr, float sm_scale = 0.0f) {
  attention_detail::extend_blocked(kv, q, qo_indptr, out, n_q_heads, threads, mask, sm_scale,
                                   attention_detail::kQueryBlock);
}

}  // namespace fastinfer::cpu
