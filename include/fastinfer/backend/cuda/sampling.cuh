// Sampling on the device: temperature, top-k, top-p (nucleus) and the
// Philox coin, with the CPU sampler's semantics (backend/cpu/sampling.hpp),
// so a sampled row costs a few bytes back to the host instead of its whole
// vocabulary row and a host pass over it.
//
// One block per row. A token's weight is exp((l - max) * (1 / T)) as the CPU
// computes it, held as an unsigned fixed-point number w * 2^s, truncated,
// with as many fraction bits as a row's sum leaves room for: s = 63 -
// bits(vocab) (48 for a vocabulary of 32000, 45 for 151936). Every sum below
// is an integer sum, exact and independent of the order threads add in, so
// a row's token is the same on every run and every GPU; truncation loses
// less than 2^-s of the maximum's weight per token, all in one direction,
// so less than vocab * 2^-s < 2^(2 bits(vocab) - 63) of the total (1e-10 at
// 32000 tokens, 4e-9 at 151936), far below the float rounding below.
// Selection never sorts:
//   top-k  the k-th best (logit descending, lower id first among equals) by
//          a radix select over the logit's order-preserving 32-bit key,
//          counting (four 8-bit digits), then a scan in id order among the
//          logits equal to the threshold for the tie;
//   top-p  the same select weighing instead of counting, among the top-k
//          survivors, for the smallest prefix whose weight reaches
//          ceil(top_p * total);
//   draw   the first id, in increasing order over the kept set, whose
//          running weight exceeds floor(coin * kept total) (a block scan
//          per tile of ids).
// Greedy rows (temperature 0) take the draw with weight 1 at the row's
// maximum and 0 elsewhere: the first maximum, as argmax gives it (with a
// draft too: the exact rule keeps a draft at the maximum and otherwise
// draws the maximum).
// A row with a draft d (the exact rule of speculative decoding at a
// deterministic drafter's token) keeps d when accept_coin * total < w(d),
// else draws as above from the kept set without d.
//
// Where the math allows the CPU's token and where it cannot: the CPU sums
// float weights in double and uses its own vector exp; the device uses
// expf and the fixed-point sums. The two agree except when the coin (or the
// top-p target) falls within a few float ulps of a boundary between two
// tokens' cumulative weights (about 1e-7 of the total), and a token whose
// weight is below 2^-s of the maximum's (a logit more than 31 T below the
// largest at 151936 tokens, 33 T at 32000) is never drawn on the device (on
// the CPU: with that probability).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/block_reduce.cuh"
#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/launch.cuh"

namespace fastinfer::cuda {

// One row to sample: which logits row, its filter and its coin; with a
// draft, the exact rule's pick (core/rejection_sampling.hpp's exact_pick
// with q one-hot at the draft).
struct SampleRequest {
  std::int32_t row;
  float inv_temperature;  // 1 / T as the host computes it; 0 = greedy
  std::int32_t top_k;     // 0, or >= vocab: off
  float top_p;            // 1: off; in (0, 1]
  float coin;             // [0, 1): the draw (with a draft: the residual's)
  std::int32_t draft = -1;  // < 0: none; else kept when accept_coin < p(draft)
  float accept_coin = 0.0f;
};

// What the device returns per row: the token, and the row's maximum (of
// its non-NaN values) and NaN flag for the host's refusals (as argmax).
struct RowSample {
  std::int32_t token;
  float max;
  std::int32_t has_nan;
};

namespace sampling_detail {

constexpr int kThreads = 512;
using Weight = unsigned long long;  // fixed point, weight_scale's bits; a row's sum < 2^63 (vocab < 2^31)

// Larger float, larger key; -0 and +0 share a key (they compare equal).
__device__ inline std::uint32_t order_key(float v) {
  const std::uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// 2^s, s = 63 - bits(vocab): vocab weights of at most 2^s each sum below 2^63.
__device__ inline float weight_scale(std::int64_t vocab) {
  const int bits = 64 - __clzll(static_cast<long long>(vocab));
  return __ull2float_rn(1ull << (63 - bits));  // a power of two: exact
}

__device__ inline Weight fixed_weight(float logit, float max, float inv_t, float scale) {
  return __float2ull_rz(expf((logit - max) * inv_t) * scale);
}

// floor(f * total) exactly, f a float in [0, 1) (f * 2^64 is an integer for
// every f >= 2^-40; smaller ones truncate).
__device__ inline Weight scaled_floor(float f, Weight total) {
  return __umul64hi(__float2ull_rz(f * 18446744073709551616.0f), total);
}
__device__ inline Weight scaled_ceil(float f, Weight total) {
  const Weight f64 = __float2ull_rz(f * 18446744073709551616.0f);
  return __umul64hi(f64, total) + ((f64 * total) != 0 ? 1 : 0);
}

// The kept set so far: a token is kept when its key is above `key`, or
// equal with an id at most `last_id` (key 0 and last_id -1: every token,
// since no non-NaN float has key 0).
struct Cut {
  std::uint32_t key;
  std::int64_t last_id;
  __device__ bool keeps(std::uint32_t k, std::int64_t id) const {
    return k > key || (k == key && id <= last_id);
  }
};

struct Shared {
  float floats[32];  // block_reduce's scratch
  Weight sums[32];   // block_reduce's and block_inclusive_sum's
  Weight bins[256];
  std::uint32_t prefix;
  Weight need;
  std::int64_t found;
};

// The first id whose running measure (in increasing id order) exceeds
// `target`, -1 when none does. measure(id, logit) >= 0.
template <class Measure>
__device__ std::int64_t first_exceeding(const float* x, std::int64_t vocab, Measure measure, Weight target,
                                        Shared& s) {
  if (threadIdx.x == 0) s.found = -1;
  __syncthreads();
  Weight carry = 0;
  std::int64_t found = -1;
  for (std::int64_t base = 0; base < vocab; base += kThreads) {
    const std::int64_t id = base + threadIdx.x;
    const Weight m = id < vocab ? measure(id, x[id]) : 0;
    Weight tile = 0;
    const Weight inclusive = block_inclusive_sum(m, s.sums, tile);
    // Running sums only grow: exactly one id crosses the target.
    if (carry + inclusive > target && carry + inclusive - m <= target) s.found = id;
    __syncthreads();
    found = s.found;
    if (found >= 0) break;
    carry += tile;
  }
  __syncthreads();  // every thread has read s.found before anything reuses it
  return found;
}

template <class Measure>
__device__ Weight block_sum(const float* x, std::int64_t vocab, Measure measure, Shared& s) {
  Weight part = 0;
  for (std::int64_t id = threadIdx.x; id < vocab; id += kThreads) part += measure(id, x[id]);
  return block_reduce(part, SumOp{}, Weight(0), s.sums);
}

// Among the tokens `within` keeps, ordered by key descending then id
// ascending, the shortest prefix whose measure reaches `need` (>= 1, at
// most their total): its last token as a Cut. Radix select over the key's
// four bytes, then the tie among equal keys in id order.
template <class Measure>
__device__ Cut select_prefix(const float* x, std::int64_t vocab, Cut within, Measure measure, Weight need,
                             Shared& s) {
  std::uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) s.bins[b] = 0;
    __syncthreads();
    // Tiles of the block's width, so a warp's 32 lanes stay together for
    // the shuffles: the lanes of one digit add their measures first
    // (reduce_peers) and the lowest of them adds the sum to the bin. A
    // 64-bit shared atomicAdd is a compare-and-swap loop, and logits crowd
    // into a few top-byte digits, so adding lane by lane would serialise
    // most of a warp on one bin. A warp with nothing to add (most of them
    // after the first pass) skips the tile.
    for (std::int64_t base = 0; base < vocab; base += kThreads) {
      const std::int64_t id = base + threadIdx.x;
      Weight m = 0;
      std::uint32_t digit = 256u;  // none
      if (id < vocab) {
        const float v = x[id];
        const std::uint32_t key = order_key(v);
        if ((key & mask) == prefix && within.keeps(key, id)) m = measure(id, v);
        if (m != 0) digit = (key >> shift) & 255u;
      }
      if (__ballot_sync(kFullWarp, m != 0) == 0u) continue;
      const unsigned peers = __match_any_sync(kFullWarp, digit);
      const Weight group = reduce_peers(peers, m);
      if (digit < 256u && int(threadIdx.x % 32) == __ffs(int(peers)) - 1) atomicAdd(&s.bins[digit], group);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      Weight above = 0;
      int digit = 255;
      for (; digit > 0 && above + s.bins[digit] < need; --digit) above += s.bins[digit];
      s.prefix = prefix | (std::uint32_t(digit) << shift);
      s.need = need - above;
    }
    __syncthreads();
    prefix = s.prefix, need = s.need;
    mask |= 0xffu << shift;
    __syncthreads();
  }
  const std::int64_t last = first_exceeding(
      x, vocab,
      [&](std::int64_t id, float v) -> Weight {
        const std::uint32_t key = order_key(v);
        return key == prefix && within.keeps(key, id) ? measure(id, v) : 0;
      },
      need - 1, s);
  return Cut{prefix, last};
}

__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(const float* logits, std::int64_t vocab, const SampleRequest* requests,
                       RowSample* out) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  __shared__ Shared s;
  const SampleRequest r = requests[blockIdx.x];
  const float* x = logits + std::int64_t(r.row) * vocab;

  float max = -INFINITY;
  int nan = 0;
  for (std::int64_t id = threadIdx.x; id < vocab; id += kThreads) {
    const float v = x[id];
    if (v != v)
      nan = 1;
    else
      max = fmaxf(max, v);
  }
  max = block_reduce(max, MaxOp{}, -INFINITY, s.floats);
  nan = __syncthreads_or(nan);
  if (nan || max == INFINITY || max == -INFINITY) {  // the host refuses the row
    if (threadIdx.x == 0) out[blockIdx.x] = RowSample{-1, max, nan};
    return;
  }

  std::int64_t token;
  if (r.inv_temperature == 0.0f) {
    token = first_exceeding(
        x, vocab, [&](std::int64_t, float v) -> Weight { return v == max ? 1 : 0; }, 0, s);
  } else {
    const float inv_t = r.inv_temperature, scale = weight_scale(vocab);
    const auto weight = [&](std::int64_t, float v) -> Weight { return fixed_weight(v, max, inv_t, scale); };
    Cut kept{0u, -1};
    if (r.top_k > 0 && r.top_k < vocab)
      kept = select_prefix(
          x, vocab, kept, [](std::int64_t, float) -> Weight { return 1; }, Weight(r.top_k), s);
    const auto kept_weight = [&](std::int64_t id, float v) -> Weight {
      return kept.keeps(order_key(v), id) ? fixed_weight(v, max, inv_t, scale) : 0;
    };
    if (r.top_p < 1.0f) {
      const Weight total = block_sum(x, vocab, kept_weight, s);
      const Weight need = scaled_ceil(r.top_p, total);
      kept = select_prefix(x, vocab, kept, weight, need > 0 ? need : 1, s);
    }
    const Weight total = block_sum(x, vocab, kept_weight, s);
    // The exact rule at a one-hot draft d: keep d when accept_coin * total <
    // w(d) (the same test as accept_coin < p(d), exactly: w(d) is an integer),
    // else draw from the kept set without d; an empty residual keeps d.
    const Weight draft_weight = r.draft >= 0 ? kept_weight(r.draft, x[r.draft]) : 0;
    if (r.draft >= 0 && (scaled_floor(r.accept_coin, total) < draft_weight || total == draft_weight)) {
      token = r.draft;
    } else {
      const auto residual_weight = [&](std::int64_t id, float v) -> Weight {
        return id == r.draft ? 0 : kept_weight(id, v);
      };
      token = first_exceeding(x, vocab, residual_weight, scaled_floor(r.coin, total - draft_weight), s);
    }
  }
  if (threadIdx.x == 0) out[blockIdx.x] = RowSample{std::int32_t(token), max, 0};
}

}  // namespace sampling_detail

// out[i] for requests[i] (both on the device), n rows; vocab in [1, 2^31)
// and requests valid (the caller checks: CudaBackend::sample_rows).
inline void sample_rows(const float* logits, std::int64_t vocab, const SampleRequest* requests,
                        std::int64_t n, RowSample* out, cudaStream_t stream) {
  if (n <= 0) return;
  launch("sample_rows_kernel", sampling_detail::sample_rows_kernel, dim3(unsigned(n)),
         dim3(sampling_detail::kThreads), 0, stream, logits, vocab, requests, out);
}

}  // namespace fastinfer::cuda
