// Scalar reference attention over a paged KV view: the oracle the vectorised
// kernels of attention.hpp are tested against, and the scalar level's kernel.
// Plain two-pass softmax in double, keys and values decoded one element at a
// time with the scalar QuantTraits::decode; no blocking, no online softmax,
// no threads. The first pass finds the largest score and the second computes
// each score again (the same bits) rather than keeping them: with its
// scratch kept per thread, a call allocates nothing once warm, so decoding at
// the scalar level does not allocate per token either.
//
// Queries: q[qo_indptr[b] + i] ([n_q_heads][head_dim] each) is new token i
// of sequence b, at position length(b) - n_b + i, where n_b is its count of
// new tokens (decode: n_b = 1). Query head j reads KV head j / (n_q_heads /
// n_kv_heads). Causal unless a CustomMask is given; a sliding window and
// sinks in the view apply on top (see kv_layout.hpp for sink positions).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fastinfer/backend/cpu/attention_plan.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/kv/paged_kv_view.hpp"

namespace fastinfer::cpu::reference {

template <typename Quant>
void paged_attention(const kv::PagedKVView<Quant>& kv, const float* q, const std::int32_t* qo_indptr, float* out,
                     int n_q_heads, const CustomMask* mask = nullptr, float sm_scale = 0.0f) {
  const int d = kv.head_dim;
  FASTINFER_CHECK(n_q_heads % kv.n_kv_heads == 0, InvalidArgument, "attention: ", n_q_heads,
                  " query heads cannot share ", kv.n_kv_heads, " KV heads evenly");
  const int group = n_q_heads / kv.n_kv_heads;
  if (sm_scale == 0.0f) sm_scale = 1.0f / std::sqrt(float(d));
  thread_local std::vector<float> kbuf, vbuf, qrot;
  thread_local std::vector<double> acc;
  for (std::vector<float>* buf : {&kbuf, &vbuf, &qrot}) buf->resize(std::size_t(d));
  acc.resize(std::size_t(d));
  std::int64_t mask_base = 0;  // sequence b's n x n mask starts here
  for (std::int32_t b = 0; b < kv.batch; ++b) {
    const std::int64_t len = kv.length(b);
    const std::int64_t n = qo_indptr[b + 1] - qo_indptr[b];
    FASTINFER_CHECK(n <= len, InvalidArgument, "attention: sequence ", b, " has ", n, " new tokens but length ", len);
    const std::int64_t first_new = len - n;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t pos = first_new + i;
      const std::int64_t key_end = mask ? len : pos + 1;
      const std::int64_t sink_end = kv.sink_end(pos), win_begin = kv.window_begin(pos);
      const std::int64_t shift = kv.sink_shift(pos);
      for (int hq = 0; hq < n_q_heads; ++hq) {
        const int h = hq / group;
        const float* qv = q + ((qo_indptr[b] + i) * n_q_heads + hq) * d;
        qrot.assign(qv, qv + d);
        rope_rotate(qrot.data(), d, -shift, kv.rope);
        auto visible = [&](std::int64_t p) {
          if (kv.window > 0 && p >= sink_end && p < win_begin) return false;
          return !(mask && p >= first_new && !mask->data[mask_base + i * n + (p - first_new)]);
        };
        auto block_of = [&](std::int64_t p) {
          const BlockId blk = kv.block(b, p / kv.block_size);
          FASTINFER_CHECK(blk != kNoBlock, Error, "attention: position ", p, " of sequence ", b, " was released");
          return blk;
        };
        auto score = [&](std::int64_t p) {
          const BlockId blk = block_of(p);
          const std::int64_t t = p % kv.block_size;
          kv::decode_row<Quant>(kv.k_row(blk, h, t), kv.k_param(blk, h, t), d, kbuf.data());
          const float* qq = p < sink_end ? qrot.data() : qv;
          double s = 0.0;
          for (int j = 0; j < d; ++j) s += double(qq[j]) * double(kbuf[std::size_t(j)]);
          return s * sm_scale;
        };
        double mx = -std::numeric_limits<double>::infinity(), sum = 0.0;
        for (std::int64_t p = 0; p < key_end; ++p)
          if (visible(p)) mx = std::max(mx, score(p));
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t p = 0; p < key_end; ++p) {
          if (!visible(p)) continue;
          const double w = std::exp(score(p) - mx);
          sum += w;
          const BlockId blk = block_of(p);
          const std::int64_t t = p % kv.block_size;
          kv::decode_row<Quant>(kv.v_row(blk, h, t), kv.v_param(blk, h, t), d, vbuf.data());
          for (int j = 0; j < d; ++j) acc[std::size_t(j)] += w * double(vbuf[std::size_t(j)]);
        }
        float* o = out + ((qo_indptr[b] + i) * n_q_heads + hq) * d;
        for (int j = 0; j < d; ++j) o[j] = sum > 0.0 ? float(acc[std::size_t(j)] / sum) : 0.0f;
      }
    }
    mask_base += n * n;
  }
}

// One query per sequence at its last position.
template <typename Quant>
void decode_attention(const kv::PagedKVView<Quant>& kv, const float* q, float* out, int n_q_heads,
                      float sm_scale = 0.0f) {
  thread_local std::vector<std::int32_t> qo;
  qo.resize(std::size_t(kv.batch) + 1);
  for (std::int32_t b = 0; b <= kv.batch; ++b) qo[std::size_t(b)] = b;
  paged_attention(kv, q, qo.data(), out, n_q_heads, nullptr, sm_scale);
}

}  // namespace fastinfer::cpu::reference
