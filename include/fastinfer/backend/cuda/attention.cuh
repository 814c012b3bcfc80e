// Attention over the CUDA KV store's paged arena: one kernel for decode
// (one query per sequence), extend (causal over the last n positions:
// chunked prefill, draft verification) and token trees (a custom mask over
// the new tokens), with the semantics of cpu::reference::paged_attention
// (attention_reference.hpp): query row qo_indptr[b] + i of sequence b sits at
// position length(b) - n_b + i; query head j reads KV head j / (n_q / n_kv);
// causal unless a mask is given, in which case row i sees every older key and
// new token j where mask[moff_b + i * n_b + j] != 0.
//
// Work: one block of 128 threads per (query row, KV head, group of H query
// heads sharing it, key split), so a K or V row is read from memory once
// for the H heads of its GQA group (H = 8, 4, 2 or 1, the largest dividing
// n_q / n_kv). A key row is read by L lanes (L = head_dim / 8 rounded up to
// a power of two), 16 bytes each (DeviceKVFormat::load8); the block's
// 128 / L lane groups walk the keys in lockstep, U keys each per step, all
// loads of a step issued before any arithmetic (bytes in flight are what
// HBM bandwidth needs). Scores are reduced across a group's lanes with
// shuffles; each group keeps an online softmax per head (one rescale per U
// keys) and its slice of the H output rows; the groups' states are merged
// exactly through shared memory at the end. With one split the block writes
// the normalised rows; with more (flash-decoding) each writes its
// unnormalised partial (acc, max, sum) and merge_kernel combines them:
// M = max m_s, O = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s. The split
// count is planned on the host (attention_plan.hpp: plain data, tested
// without a GPU).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/attention_mma.cuh"
#include "fastinfer/backend/cuda/attention_plan.hpp"
#include "fastinfer/backend/cuda/attention_rows.cuh"
#include "fastinfer/backend/cuda/cuda_check.cuh"
#include "fastinfer/backend/cuda/device_buffer.cuh"
#include "fastinfer/backend/cuda/elementwise.cuh"
#include "fastinfer/backend/cuda/kv_format.cuh"
#include "fastinfer/backend/cuda/launch.cuh"
#include "fastinfer/kv/kv_quant.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

namespace fastinfer::cuda {

namespace attention_detail {

constexpr int kThreads = 128;
constexpr int kLaneDims = 8;                      // values of a K/V row per lane
constexpr int kMaxHeadDim = 32 * kLaneDims;       // a row within one warp

// Launch geometry for a head_dim and a GQA group size (host and device).
struct Geometry {
  int lanes = 1;   // L: lanes per key row, a power of two, L * 8 >= head_dim
  int heads = 1;   // H: query heads per block
  int keys = 4;    // U: keys per lane group per step
  __host__ __device__ int groups() const { return kThreads / lanes; }
  __host__ __device__ int tile() const { return groups() * keys; }
};

inline Geometry geometry(int head_dim, int group_size) {
  Geometry g;
  while (g.lanes * kLaneDims < head_dim) g.lanes *= 2;
  for (int h : {8, 4, 2, 1})
    if (group_size % h == 0) {
      g.heads = h;
      break;
    }
  // Registers decide the speed: acc is H x 8 floats, a step's K and V rows
  // U x 16. Measured on an H200 (f16 KV, head_dim 128, 4 heads per KV head):
  // H 4 x U 2 (128 registers, 4 blocks per SM) read 1.47 TB/s, H 4 x U 4
  // (165 registers) 0.85, H 1 x U 4 (K/V read once per query head) 0.53.
  g.keys = g.heads == 8 ? 1 : g.heads == 1 ? 4 : 2;
  return g;
}

// Steps ahead that a lane group prefetches its K and V rows into L2 (0:
// none): FASTINFER_CUDA_ATTENTION_PREFETCH, read once, default 2. Measured
// on an H200 (64 x 4096 keys, f16 KV, head_dim 128, 4 heads per KV head):
// 0 steps 1.44 TB/s, 2 1.50, 4 1.47, 8 1.31, 16 1.26. The gain is small
// because this kernel runs out of issue slots before it runs out of bytes
// in flight (what attention_mma.cuh addresses).
inline int prefetch_steps() {
  static const int steps = [] {
    const char* e = std::getenv("FASTINFER_CUDA_ATTENTION_PREFETCH");
    if (e == nullptr) return 2;
    const int v = std::atoi(e);
    return v < 0 ? 0 : v > 64 ? 64 : v;
  }();
  return steps;
}

// Floats of shared memory: the H query rows (padded to L * 8), the merge
// area (one (L * 8 + 2)-float state per (lane group, head)) and the H maxima.
inline std::size_t shared_floats(const Geometry& g) {
  const std::size_t width = std::size_t(g.lanes) * kLaneDims;
  return std::size_t(g.heads) * width + std::size_t(g.groups()) * std::size_t(g.heads) * (width + 2) +
         std::size_t(g.heads);
}

template <typename Quant>
__device__ inline void load_row8(const std::uint8_t* codes, const float* params, int j0, int d, bool vec,
                                 float* out) {
  if (vec) {
    DeviceKVFormat<Quant>::load8(codes, params, j0, d, out);
  } else {
#pragma unroll
    for (int e = 0; e < kLaneDims; ++e)
      out[e] = j0 + e < d ? DeviceKVFormat<Quant>::load(codes, params, j0 + e, d) : 0.0f;
  }
}

// grid (rows, n_kv_heads * n_q / n_kv / H, splits), block kThreads, dynamic
// shared memory shared_floats(geometry). partial: [rows][n_q_heads][splits]
// [head_dim + 2] (acc..., max, sum) when splits > 1.
template <typename Quant, int H, int U>
__global__ void __launch_bounds__(kThreads) attention_kernel(DevicePagedKV kv, DeviceQueryRows qr, const float* q,
                                                            float* out, float* partial, int n_q_heads, int lanes,
                                                            float scale, std::int64_t chunk, int prefetch_steps) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  extern __shared__ float smem[];
  const int d = kv.head_dim, L = lanes, G = kThreads / L, width = L * kLaneDims;
  const int group = int(threadIdx.x) / L, lane = int(threadIdx.x) % L, j0 = lane * kLaneDims;
  const int per_kv = n_q_heads / kv.n_kv_heads, subsets = per_kv / H;
  const int h = int(blockIdx.y) / subsets, hq0 = h * per_kv + (int(blockIdx.y) % subsets) * H;
  const std::int64_t row = blockIdx.x;
  const int split = int(blockIdx.z), splits = int(gridDim.z);
  const RowKeys rk = row_keys(kv, qr, row, split, chunk);
  const std::int64_t begin = rk.begin, end = rk.end;

  float* qs = smem;  // [H][width], scaled, zero past d
  for (int idx = int(threadIdx.x); idx < H * width; idx += kThreads) {
    const int i = idx / width, j = idx % width;
    qs[idx] = j < d ? q[(row * n_q_heads + hq0 + i) * d + j] * scale : 0.0f;
  }
  __syncthreads();

  const bool active = j0 < d, vec = d % kLaneDims == 0;
  const BlockId* table = rk.table;
  float acc[H][kLaneDims], m[H], l[H];
#pragma unroll
  for (int i = 0; i < H; ++i) {
    m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
    for (int e = 0; e < kLaneDims; ++e) acc[i][e] = 0.0f;
  }
  // A lane's byte offset in a row of codes (below row_bytes: j0 < d).
  const std::int64_t lane_byte = active ? std::int64_t(j0) * kv.row_bytes / d : 0;
  // Every lane runs the same number of steps (shuffles need the whole warp).
  for (std::int64_t t0 = begin; t0 < end; t0 += std::int64_t(G) * U) {
    float kf[U][kLaneDims], vf[U][kLaneDims];
    bool visible[U];
    // The group's U keys are consecutive: one 32-bit division finds the
    // first one's block (a 64-bit division per key cost more than the loads).
    const std::int32_t first = std::int32_t(t0) + group * U;
    if (prefetch_steps > 0 && active) {
      // The rows this group reads prefetch_steps steps from now, into L2:
      // what keeps HBM busy while the step's arithmetic runs (a block's
      // steps are otherwise a load round trip each).
      const std::int32_t ahead = first + prefetch_steps * G * U;
      std::int32_t pb = ahead / kv.block_size, pt = ahead - pb * kv.block_size;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (u > 0 && ++pt == kv.block_size) pt = 0, ++pb;
        if (ahead + u >= end) break;
        const std::int64_t off = std::int64_t(table[pb]) * kv.block_stride + std::int64_t(h) * kv.head_stride +
                                 pt * kv.row_bytes + lane_byte;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(kv.k_codes + off));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(kv.v_codes + off));
      }
    }
    std::int32_t bi = first / kv.block_size, tok = first - bi * kv.block_size;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const std::int32_t key = first + u;
      if (u > 0 && ++tok == kv.block_size) tok = 0, ++bi;
      visible[u] = rk.visible(key);
      if (visible[u] && active) {
        const std::int64_t blk = table[bi];
        const std::int64_t code_off = blk * kv.block_stride + std::int64_t(h) * kv.head_stride + tok * kv.row_bytes;
        const std::int64_t param_off =
            blk * kv.param_block_stride + std::int64_t(h) * kv.param_head_stride + tok * kv.params_per_row;
        load_row8<Quant>(kv.k_codes + code_off, kv.k_params + param_off, j0, d, vec, kf[u]);
        load_row8<Quant>(kv.v_codes + code_off, kv.v_params + param_off, j0, d, vec, vf[u]);
      } else {
#pragma unroll
        for (int e = 0; e < kLaneDims; ++e) kf[u][e] = 0.0f, vf[u][e] = 0.0f;
      }
    }
    float s[U][H];
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const float4 qa = *reinterpret_cast<const float4*>(qs + i * width + j0);
      const float4 qb = *reinterpret_cast<const float4*>(qs + i * width + j0 + 4);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        float dot = qa.x * kf[u][0];
        dot = fmaf(qa.y, kf[u][1], dot), dot = fmaf(qa.z, kf[u][2], dot), dot = fmaf(qa.w, kf[u][3], dot);
        dot = fmaf(qb.x, kf[u][4], dot), dot = fmaf(qb.y, kf[u][5], dot), dot = fmaf(qb.z, kf[u][6], dot);
        s[u][i] = fmaf(qb.w, kf[u][7], dot);
      }
    }
    // The L lanes of a group are aligned within the warp: xor offsets below L stay in it.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      if (o < L)
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int i = 0; i < H; ++i) s[u][i] += __shfl_xor_sync(0xffffffffu, s[u][i], o);
#pragma unroll
    for (int i = 0; i < H; ++i) {
      float step_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (visible[u]) step_max = fmaxf(step_max, s[u][i]);
      const float m_new = fmaxf(m[i], step_max);
      if (m_new == -INFINITY) continue;  // nothing visible to this group yet
      const float alpha = m[i] == -INFINITY ? 0.0f : __expf(m[i] - m_new);
      float sum = l[i] * alpha;
#pragma unroll
      for (int e = 0; e < kLaneDims; ++e) acc[i][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float p = visible[u] ? __expf(s[u][i] - m_new) : 0.0f;
        sum += p;
#pragma unroll
        for (int e = 0; e < kLaneDims; ++e) acc[i][e] = fmaf(p, vf[u][e], acc[i][e]);
      }
      l[i] = sum, m[i] = m_new;
    }
  }

  // The lane groups' states, merged exactly.
  float* state = smem + H * width;  // [G][H][width + 2]
#pragma unroll
  for (int i = 0; i < H; ++i) {
    float* st = state + (std::int64_t(group) * H + i) * (width + 2);
#pragma unroll
    for (int e = 0; e < kLaneDims; ++e) st[j0 + e] = acc[i][e];
    if (lane == 0) st[width] = m[i], st[width + 1] = l[i];
  }
  __syncthreads();
  // Each head's maximum, then one weight e^(m_g - M) per (group, head), in
  // place of the group's max: the output loop below is FMAs only.
  float* head_max = state + G * H * (width + 2);  // [H]
  if (int(threadIdx.x) < H) {
    float mx = -INFINITY;
    for (int gr = 0; gr < G; ++gr) mx = fmaxf(mx, state[(gr * H + int(threadIdx.x)) * (width + 2) + width]);
    head_max[threadIdx.x] = mx;
  }
  __syncthreads();
  for (int idx = int(threadIdx.x); idx < G * H; idx += kThreads) {
    float* st = state + idx * (width + 2);
    const float mx = head_max[idx % H];
    st[width] = st[width] == -INFINITY ? 0.0f : __expf(st[width] - mx);
  }
  __syncthreads();
  for (int idx = int(threadIdx.x); idx < H * d; idx += kThreads) {
    const int i = idx / d, j = idx % d;
    const float mx = head_max[i];
    float a = 0.0f, sum = 0.0f;
    for (int gr = 0; gr < G; ++gr) {
      const float* st = state + (gr * H + i) * (width + 2);
      a = fmaf(st[width], st[j], a);
      sum = fmaf(st[width], st[width + 1], sum);
    }
    store_output(out, partial, row, n_q_heads, hq0 + i, d, split, splits, j, a, mx, sum);
  }
}

// grid (rows, n_q_heads), block kThreads: the exact merge of the splits.
__global__ void merge_kernel(const float* partial, float* out, int n_q_heads, int d, int splits) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
  const std::int64_t row = blockIdx.x;
  const int hq = int(blockIdx.y);
  const float* pr = partial + (row * n_q_heads + hq) * std::int64_t(splits) * (d + 2);
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, pr[s * (d + 2) + d]);
  float l = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = pr[s * (d + 2) + d];
    if (ms != -INFINITY) l += expf(ms - mx) * pr[s * (d + 2) + d + 1];
  }
  float* o = out + (row * n_q_heads + hq) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = pr[s * (d + 2) + d];
      if (ms != -INFINITY) a += expf(ms - mx) * pr[s * (d + 2) + j];
    }
    o[j] = l > 0.0f ? a / l : 0.0f;
  }
}

// The key splits of a launch with `head_blocks` blocks per query row,
// `resident` of them per SM and `tile` keys a block step, `partial` grown
// to hold them; chunk is effectively unbounded with one split. Ranges as
// short as two steps: with few blocks (decode of a small batch) a block's
// steps run one after another at memory latency, so more, shorter ranges
// finish sooner; the merge costs one small kernel. A block's fixed cost
// (query load, pipeline fill) is taken as two steps.
inline SplitPlan plan_launch(std::int64_t rows, int head_blocks, std::int64_t longest, int sm_count,
                             int resident, int tile, int n_q_heads, int d, DeviceBuffer<float>& partial) {
  SplitPlanOptions options;
  options.resident_blocks_per_sm = resident;
  options.min_split_keys = 2 * tile;
  options.block_overhead_keys = 2 * tile;
  SplitPlan plan = plan_splits(rows, head_blocks, longest, sm_count, tile, options);
  if (plan.splits > 1)
    partial.reserve_discard(std::size_t(rows) * std::size_t(n_q_heads) * std::size_t(plan.splits) *
                            std::size_t(d + 2));
  else
    plan.chunk = std::int64_t(1) << 40;
  return plan;
}

// merge_kernel over the splits' partials, when there are several.
inline void merge_splits(const SplitPlan& plan, const DeviceBuffer<float>& partial, float* out, std::int64_t rows,
                         int n_q_heads, int d, cudaStream_t stream) {
  if (plan.splits <= 1) return;
  cuda::launch("merge_kernel", merge_kernel, dim3(unsigned(rows), unsigned(n_q_heads)), dim3(kThreads), 0, stream,
               partial.data(), out, n_q_heads, d, plan.splits);
}

}  // namespace attention_detail

// attention_mma.cuh's kernel for f16 KV of head size D: the same plan and
// partials as the kernel below, a block per (row, KV head) of 4 warps that
// take 16 keys each a step.
template <int D>
void paged_attention_mma(const DevicePagedKV& kv, const DeviceQueryRows& qr, const float* q, float* out,
                         DeviceBuffer<float>& partial, std::int64_t rows, int n_q_heads, std::int64_t longest,
                         int sm_count, cudaStream_t stream) {
  namespace am = attention_mma_detail;
  const auto kernel = am::attention_mma_kernel<D>;
  constexpr std::size_t smem = am::shared_bytes<D>();
  const int resident = cuda::resident_blocks_per_sm(kernel, am::kThreads, smem);
  const SplitPlan plan = attention_detail::plan_launch(rows, kv.n_kv_heads, longest, sm_count, resident,
                                                       am::kWarps * am::kTileKeys, n_q_heads, D, partial);
  cuda::launch("attention_mma_kernel", kernel, dim3(unsigned(rows), unsigned(kv.n_kv_heads), unsigned(plan.splits)),
               dim3(am::kThreads), smem, stream, kv, qr, q, out, partial.data(), n_q_heads,
               1.0f / std::sqrt(float(D)), plan.chunk);
  attention_detail::merge_splits(plan, partial, out, rows, n_q_heads, D, stream);
}

// cpu: cpu::decode_attention / cpu::extend_attention (oracle:
// cpu::reference::paged_attention). `longest`: the longest sequence of the
// step (plans the key splits); `partial` grows to what a split plan needs.
// `tensor_cores`: f16 KV of head size 64 or 128 with up to 16 query heads
// per KV head takes attention_mma.cuh's kernel (CudaContext's choice).
template <typename Quant>
void paged_attention(const DevicePagedKV& kv, const DeviceQueryRows& qr, const float* q, float* out,
                     DeviceBuffer<float>& partial, std::int64_t rows, int n_q_heads, std::int64_t longest,
                     int sm_count, cudaStream_t stream, bool tensor_cores = false) {
  namespace ad = attention_detail;
  if (rows <= 0) return;
  FASTINFER_CHECK(kv.head_dim >= 1 && kv.head_dim <= ad::kMaxHeadDim, InvalidArgument, "cuda attention: head_dim ",
                  kv.head_dim, " outside [1, ", ad::kMaxHeadDim, "]");
  FASTINFER_CHECK(n_q_heads % kv.n_kv_heads == 0, InvalidArgument, "attention: ", n_q_heads,
                  " query heads cannot share ", kv.n_kv_heads, " KV heads evenly");
  const int per_kv = n_q_heads / kv.n_kv_heads;
  if constexpr (std::is_same_v<Quant, kv::F16>) {
    if (tensor_cores && (kv.head_dim == 64 || kv.head_dim == 128) && per_kv <= attention_mma_detail::kMaxHeads) {
      if (kv.head_dim == 64) return paged_attention_mma<64>(kv, qr, q, out, partial, rows, n_q_heads, longest,
                                                           sm_count, stream);
      return paged_attention_mma<128>(kv, qr, q, out, partial, rows, n_q_heads, longest, sm_count, stream);
    }
  }
  const ad::Geometry g = ad::geometry(kv.head_dim, per_kv);
  const int head_blocks = kv.n_kv_heads * (per_kv / g.heads);
  const auto kernel = g.heads == 8   ? ad::attention_kernel<Quant, 8, 1>
                      : g.heads == 4 ? ad::attention_kernel<Quant, 4, 2>
                      : g.heads == 2 ? ad::attention_kernel<Quant, 2, 2>
                                     : ad::attention_kernel<Quant, 1, 4>;
  const std::size_t smem = sizeof(float) * ad::shared_floats(g);
  const int resident = cuda::resident_blocks_per_sm(kernel, ad::kThreads, smem);
  const SplitPlan plan = ad::plan_launch(rows, head_blocks, longest, sm_count, resident, g.tile(), n_q_heads,
                                         kv.head_dim, partial);
  const float scale = 1.0f / std::sqrt(float(kv.head_dim));
  const dim3 grid(unsigned(rows), unsigned(head_blocks), unsigned(plan.splits));
  cuda::launch("attention_kernel", kernel, grid, dim3(ad::kThreads), smem, stream, kv, qr, q, out,
               partial.data(), n_q_heads, g.lanes, scale, plan.chunk, ad::prefetch_steps());
  ad::merge_splits(plan, partial, out, rows, n_q_heads, kv.head_dim, stream);
}

}  // namespace fastinfer::cuda
