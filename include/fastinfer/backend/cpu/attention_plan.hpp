// Host-side plan of a batched decode-attention call, and the pieces every
// attention kernel shares: the exact merge of partial softmax states and the
// query rotation that renumbers StreamingLLM sinks.
//
// Flash-decoding: one sequence of 32k tokens with 8 KV heads is 8 work items,
// too few for the cores when the batch is small, so long sequences are cut
// into ranges of keys (kKeyChunk each, whatever the batch or the threads).
// Each range yields a partial state (running max m, sum of exponentials l,
// unnormalised output o); merge_states combines them
// exactly: M = max m_i, out = sum e^(m_i - M) o_i / sum e^(m_i - M) l_i.
// A plan is plain data: computed once per step, testable without a kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"

namespace fastinfer::cpu {

// Keys per split-K chunk. A query's keys are cut into chunks of this many
// from the start of each segment it sees (the sinks, then the window or the
// whole sequence), each chunk is one online-softmax state, and the chunks
// are merged in order by merge_states. Decode and extend both cut this way,
// so the summation order of a query's attention depends on its key range
// alone: never on the batch beside it, the number of queries in the call,
// the thread count, or which of the two kernels ran it. A multiple of the
// kernels' softmax tile (64 keys).
inline constexpr std::int64_t kKeyChunk = 512;

// Calls f(begin, end) for the chunks of [lo, hi), in order.
template <typename F>
inline void for_each_key_chunk(std::int64_t lo, std::int64_t hi, std::int64_t chunk, F&& f) {
  for (std::int64_t x = lo; x < hi; x += chunk) f(x, std::min(hi, x + chunk));
}

struct DecodePlanOptions {
  // Cut every range at exactly this many tokens. Any value keeps decode
  // independent of the batch and the threads; only kKeyChunk gives the bits
  // of extend_attention (other values are for tests of the merge).
  std::int64_t split_tokens = kKeyChunk;
};

struct DecodePlan {
  // One key range of one (sequence, KV head). `sink`: the range is the
  // StreamingLLM sinks, read with the query rotated back by the window shift.
  struct Item {
    std::int32_t seq = 0;
    std::int32_t kv_head = 0;
    std::int64_t begin = 0;
    std::int64_t end = 0;
    bool sink = false;
  };
  std::int32_t n_kv_heads = 0;
  std::vector<Item> items;  // grouped by (seq, kv_head), ranges in order
  // Items of (seq b, head h) are items[first[b] + h * ranges[b] + r], r < ranges[b].
  std::vector<std::int64_t> first;
  std::vector<std::int32_t> ranges;
};

// The plan for decoding one query at the last position of each sequence:
// the key chunks of each (sequence, KV head), a function of the lengths
// alone. A lone long sequence yields many items, which is what keeps the
// threads busy (flash-decoding).
inline DecodePlan plan_decode(const std::vector<std::int64_t>& lengths, std::int32_t n_kv_heads,
                              std::int32_t window, std::int32_t sinks, const DecodePlanOptions& opt = {}) {
  FASTINFER_CHECK(n_kv_heads > 0, InvalidArgument, "plan_decode: n_kv_heads must be positive, got ", n_kv_heads);
  FASTINFER_CHECK(opt.split_tokens > 0, InvalidArgument, "plan_decode: split_tokens must be positive, got ",
                  opt.split_tokens);
  for (std::int64_t len : lengths)
    FASTINFER_CHECK(len >= 1, InvalidArgument, "plan_decode: a decoded sequence needs at least 1 token, got ", len);
  DecodePlan plan;
  plan.n_kv_heads = n_kv_heads;
  for (std::int32_t b = 0; b < std::int32_t(lengths.size()); ++b) {
    // The key segments of the query at pos = len - 1: [0, sink_end) and
    // [window_begin, len), as PagedKVView::sink_end / window_begin say.
    const std::int64_t len = lengths[std::size_t(b)];
    const std::int64_t sink_end = window > 0 ? std::min<std::int64_t>(sinks, len) : 0;
    const std::int64_t win_begin = window > 0 ? std::max<std::int64_t>(sink_end, len - window) : 0;
    std::vector<DecodePlan::Item> one;
    auto cut = [&](std::int64_t lo, std::int64_t hi, bool sink) {
      for_each_key_chunk(lo, hi, opt.split_tokens, [&](std::int64_t x0, std::int64_t x1) {
        one.push_back({b, 0, x0, x1, sink});
      });
    };
    cut(0, sink_end, true);
    cut(win_begin, len, false);
    plan.first.push_back(std::int64_t(plan.items.size()));
    plan.ranges.push_back(std::int32_t(one.size()));
    for (std::int32_t h = 0; h < n_kv_heads; ++h)
      for (auto it : one) {
        it.kv_head = h;
        plan.items.push_back(it);
      }
  }
  return plan;
}

template <typename Quant>
DecodePlan plan_decode(const kv::PagedKVView<Quant>& kv, const DecodePlanOptions& opt = {}) {
  std::vector<std::int64_t> lengths;
  for (std::int32_t b = 0; b < kv.batch; ++b) lengths.push_back(kv.length(b));
  return plan_decode(lengths, kv.n_kv_heads, kv.window, kv.sinks, opt);
}

// Partial softmax states of `n` ranges (m[i], l[i], o[i * d ..]) merged into
// out[d]: exact up to rounding. A range that saw no key has m = -inf, l = 0.
inline void merge_states(int n, const float* m, const float* l, const float* o, std::int64_t o_stride, int d,
                         float* out) {
  if (n == 1 && l[0] != 0.0f && m[0] > -std::numeric_limits<float>::infinity()) {
    // One range (a context within one chunk: most decode steps and verify
    // passes): the loop below with w = e^0 = 1, written out; 0 + o keeps the
    // sign of zero the loop's sum gives.
    const float inv = 1.0f / (0.0f + l[0]);
    for (int j = 0; j < d; ++j) out[j] = (0.0f + o[j]) * inv;
    return;
  }
  float mx = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, m[i]);
  std::fill(out, out + d, 0.0f);
  if (mx == -std::numeric_limits<float>::infinity()) return;
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (l[i] == 0.0f) continue;
    const float w = std::exp(m[i] - mx);
    sum += w * l[i];
    const float* oi = o + i * o_stride;
    for (int j = 0; j < d; ++j) out[j] += w * oi[j];
  }
  const float inv = 1.0f / sum;
  for (int j = 0; j < d; ++j) out[j] *= inv;
}

// Rotates each RoPE pair of v[0..d) by `delta` positions (angles in double:
// delta can be large in a long stream).
inline void rope_rotate(float* v, int d, std::int64_t delta, const kv::RopeSpec& rope) {
  if (delta == 0) return;
  const int half = d / 2;
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(double(rope.theta), -double(2 * i) / double(d));
    const double angle = double(delta) * freq;
    const double c = std::cos(angle), s = std::sin(angle);
    const int a = rope.half_split ? i : 2 * i;
    const int b = rope.half_split ? i + half : 2 * i + 1;
    const double x0 = v[a], x1 = v[b];
    v[a] = float(x0 * c - x1 * s);
    v[b] = float(x0 * s + x1 * c);
  }
}

// A per-sequence boolean mask over the new query tokens (token trees): for
// sequence b with n = qo_indptr[b+1] - qo_indptr[b] new tokens, an n x n
// row-major block of bytes (nonzero: query i sees new token j) starts at
// offset sum over earlier sequences of their n * n. Keys before the new tokens
// are always visible.
struct CustomMask {
  const std::uint8_t* data = nullptr;
};

inline std::vector<std::int64_t> mask_offsets(const std::int32_t* qo_indptr, std::int32_t batch) {
  std::vector<std::int64_t> off(std::size_t(batch) + 1, 0);
  for (std::int32_t b = 0; b < batch; ++b) {
    const std::int64_t n = qo_indptr[b + 1] - qo_indptr[b];
    off[std::size_t(b) + 1] = off[std::size_t(b)] + n * n;
  }
  return off;
}

}  // namespace fastinfer::cpu
