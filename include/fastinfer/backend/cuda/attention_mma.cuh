// Paged attention on tensor cores for f16 KV (attention.cuh picks it for
// head_dim 64 or 128 and up to 16 query heads per KV head; every other case
// takes attention.cuh's kernel). The same semantics, rows and partials as
// that kernel: query row qo_indptr[b] + i of sequence b at position
// length(b) - n_b + i, causal unless a mask is given, one KV head's query
// heads per block, flash-decoding splits merged by merge_kernel.
//
// Why: the f32 kernel spends some 350 instructions a thread on a 16-key
// step (widening, FMAs, shuffle reductions), so it runs out of issue slots
// at a third of HBM bandwidth. Here a warp takes 16 keys a step: the KV
// heads' query heads are the 16 rows of an m16n8k16 MMA (zero past the
// group), K and V are the B operands read from shared memory with ldmatrix
// (V transposed), some 110 instructions for the same bytes.
//
// Precision: the products stay at f32's. K and V are f16 already (exact
// operands); q (scaled) and the softmax weights p are f32, so each is split
// into two f16 parts, hi = f16(x), lo = f16(x - hi), and both go through
// the MMA with f32 accumulation: x to about 2^-22 relative, where f16 alone
// would give 2^-11. It costs twice the MMAs, which have room to spare.
//
// Memory: each warp streams its own tiles (tiles warp, warp + 4, ... of
// its split's keys) with cp.async into kStages shared-memory stages, so
// kStages - 1 tiles are in flight while one is computed. Row stride
// head_dim + 8 halves keeps ldmatrix free of bank conflicts.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastinfer/backend/cuda/attention_rows.cuh"
#include "fastinfer/backend/cuda/launch.cuh"

namespace fastinfer::cuda::attention_mma_detail {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTileKeys = 16;  // keys a warp takes a step
constexpr int kStages = 3;
constexpr int kMaxHeads = 16;  // query heads per KV head: the MMA's rows

template <int D>
__host__ __device__ constexpr int row_halves() {
  return D + 8;
}
// Dynamic shared memory: kStages x warps x (K, V) tiles of 16 rows.
template <int D>
constexpr std::size_t shared_bytes() {
  return std::size_t(kStages) * kWarps * 2 * kTileKeys * row_halves<D>() * sizeof(__half);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ inline void cp_async16(void* dst, const void* src, int src_bytes) {
  const unsigned s = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ inline void ldmatrix_x4(const void* p, unsigned (&r)[4]) {
  const unsigned s = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ inline void ldmatrix_x4_trans(const void* p, unsigned (&r)[4]) {
  const unsigned s = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
// c += a b: m16n8k16, f16 operands, f32 accumulators.
__device__ inline void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// Two f32 values as f16 pairs hi and lo (x = hi + lo to about 2^-22).
__device__ inline void split_pair(float x, float y, unsigned& hi, unsigned& lo) {
  const __half2 h = __floats2half2_rn(x, y);
  const float2 back = __half22float2(h);
  const __half2 l = __floats2half2_rn(x - back.x, y - back.y);
  hi = *reinterpret_cast<const unsigned*>(&h);
  lo = *reinterpret_cast<const unsigned*>(&l);
}

// grid (rows, n_kv_heads, splits), block kThreads, dynamic shared memory
// shared_bytes<D>(). Scores are kept in log2 units (q scaled by scale x
// log2 e); a partial's max goes out in natural units for merge_kernel.
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_mma_kernel(DevicePagedKV kv, DeviceQueryRows qr, const float* q, float* out, float* partial,
                         int n_q_heads, float scale, std::int64_t chunk) {
  FASTINFER_CUDA_KERNEL_PROLOGUE();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* smem = reinterpret_cast<__half*>(smem_raw);
  constexpr int RH = row_halves<D>();
  constexpr int kTileHalves = kTileKeys * RH;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;  // the MMA fragments' row group and thread in group
  const int per_kv = n_q_heads / kv.n_kv_heads;
  const int h = int(blockIdx.y), hq0 = h * per_kv;
  const std::int64_t row = blockIdx.x;
  const int split = int(blockIdx.z), splits = int(gridDim.z);
  const RowKeys rk = row_keys(kv, qr, row, split, chunk);
  const std::int64_t begin = rk.begin, end = rk.end;
  const BlockId* table = rk.table;

  // q rows g and g + 8 of the group (zero past per_kv) as A fragments, hi and lo.
  constexpr float kLog2e = 1.4426950408889634f;
  const float qscale = scale * kLog2e;
  unsigned qhi[D / 16][4], qlo[D / 16][4];
  auto qv = [&](int r, int c) { return r < per_kv ? q[(row * n_q_heads + hq0 + r) * D + c] * qscale : 0.0f; };
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    const int c = kc * 16 + 2 * t;
    split_pair(qv(g, c), qv(g, c + 1), qhi[kc][0], qlo[kc][0]);
    split_pair(qv(g + 8, c), qv(g + 8, c + 1), qhi[kc][1], qlo[kc][1]);
    split_pair(qv(g, c + 8), qv(g, c + 9), qhi[kc][2], qlo[kc][2]);
    split_pair(qv(g + 8, c + 8), qv(g + 8, c + 9), qhi[kc][3], qlo[kc][3]);
  }

  // This warp's tiles: warp, warp + kWarps, ... of the split's keys.
  const std::int64_t tiles = end > begin ? (end - begin + kTileKeys - 1) / kTileKeys : 0;
  const int mine = tiles > warp ? int((tiles - warp + kWarps - 1) / kWarps) : 0;
  __half* my_smem = smem + std::size_t(warp) * kStages * 2 * kTileHalves;
  // Two lanes a key, alternate 16-byte pieces of its K and V rows.
  auto load_tile = [&](int i, int stage) {
    const std::int64_t key = begin + (std::int64_t(warp) + std::int64_t(kWarps) * i) * kTileKeys + lane / 2;
    const bool ok = key < end;
    const std::uint8_t* kp = kv.k_codes;
    const std::uint8_t* vp = kv.v_codes;
    if (ok) {
      const std::int32_t k32 = std::int32_t(key), bi = k32 / kv.block_size, tok = k32 - bi * kv.block_size;
      const std::int64_t off = std::int64_t(table[bi]) * kv.block_stride + std::int64_t(h) * kv.head_stride +
                               std::int64_t(tok) * kv.row_bytes;
      kp += off, vp += off;
    }
    __half* ks = my_smem + std::size_t(stage) * 2 * kTileHalves + (lane / 2) * RH;
    __half* vs = ks + kTileHalves;
#pragma unroll
    for (int p = lane % 2; p < D / 8; p += 2) {
      cp_async16(ks + p * 8, kp + p * 16, ok ? 16 : 0);
      cp_async16(vs + p * 8, vp + p * 16, ok ? 16 : 0);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < mine) load_tile(s, s);
    cp_async_commit();
  }

  float o[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g, g + 8

  for (int i = 0; i < mine; ++i) {
    if (i + kStages - 1 < mine) load_tile(i + kStages - 1, (i + kStages - 1) % kStages);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();
    const __half* ks = my_smem + std::size_t(i % kStages) * 2 * kTileHalves;
    const __half* vs = ks + kTileHalves;
    const std::int64_t k0 = begin + (std::int64_t(warp) + std::int64_t(kWarps) * i) * kTileKeys;

    // s = q K^T over 16 keys: two n-tiles of 8.
    float s[2][4] = {};
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      unsigned kb[4];
      const int mi = lane / 8;
      ldmatrix_x4(ks + ((mi / 2) * 8 + lane % 8) * RH + kc * 16 + (mi % 2) * 8, kb);
      mma16816(s[0], qhi[kc], kb[0], kb[1]);
      mma16816(s[0], qlo[kc], kb[0], kb[1]);
      mma16816(s[1], qhi[kc], kb[2], kb[3]);
      mma16816(s[1], qlo[kc], kb[2], kb[3]);
    }
    // Hidden keys (past the range, masked by the tree) weigh nothing.
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const std::int64_t key = k0 + nt * 8 + 2 * t + e;
        if (!rk.visible(key)) s[nt][e] = s[nt][e + 2] = -INFINITY;
      }
    // Online softmax per row (the quad of lanes sharing a row agrees).
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx);
      alpha[r] = m_new == -INFINITY ? 1.0f : exp2f(m[r] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[nt][2 * r + e];
          v = v == -INFINITY ? 0.0f : exp2f(v - m_new);
          sum += v;
        }
      l[r] = l[r] * alpha[r] + sum;
      m[r] = m_new;
    }
    if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
        o[nt][0] *= alpha[0], o[nt][1] *= alpha[0], o[nt][2] *= alpha[1], o[nt][3] *= alpha[1];
    }
    // p as the A operand (rows g, g + 8; keys 2t.. and 8 + 2t..), hi and lo.
    unsigned phi[4], plo[4];
    split_pair(s[0][0], s[0][1], phi[0], plo[0]);
    split_pair(s[0][2], s[0][3], phi[1], plo[1]);
    split_pair(s[1][0], s[1][1], phi[2], plo[2]);
    split_pair(s[1][2], s[1][3], phi[3], plo[3]);
    // o += p V: V transposed by ldmatrix, two n-tiles of 8 dims a load.
#pragma unroll
    for (int n2 = 0; n2 < D / 16; ++n2) {
      unsigned vb[4];
      const int mi = lane / 8;
      ldmatrix_x4_trans(vs + ((mi % 2) * 8 + lane % 8) * RH + n2 * 16 + (mi / 2) * 8, vb);
      mma16816(o[2 * n2], phi, vb[0], vb[1]);
      mma16816(o[2 * n2], plo, vb[0], vb[1]);
      mma16816(o[2 * n2 + 1], phi, vb[2], vb[3]);
      mma16816(o[2 * n2 + 1], plo, vb[2], vb[3]);
    }
    __syncwarp();
  }
  cp_async_wait<0>();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }

  // The warps' states merged exactly: [warp][16 rows][D] sums, then m, l.
  __syncthreads();
  float* st = reinterpret_cast<float*>(smem_raw);
  constexpr int kWarpFloats = kMaxHeads * D + 2 * kMaxHeads;
  float* mine_st = st + warp * kWarpFloats;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int c = nt * 8 + 2 * t;
    mine_st[g * D + c] = o[nt][0], mine_st[g * D + c + 1] = o[nt][1];
    mine_st[(g + 8) * D + c] = o[nt][2], mine_st[(g + 8) * D + c + 1] = o[nt][3];
  }
  if (t == 0) {
    mine_st[kMaxHeads * D + g] = m[0], mine_st[kMaxHeads * D + g + 8] = m[1];
    mine_st[kMaxHeads * D + kMaxHeads + g] = l[0], mine_st[kMaxHeads * D + kMaxHeads + g + 8] = l[1];
  }
  __syncthreads();
  constexpr float kLn2 = 0.6931471805599453f;
  for (int idx = int(threadIdx.x); idx < per_kv * D; idx += kThreads) {
    const int r = idx / D, j = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, st[w * kWarpFloats + kMaxHeads * D + r]);
    float a = 0.0f, sum = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float mw = st[w * kWarpFloats + kMaxHeads * D + r];
        if (mw == -INFINITY) continue;
        const float e = exp2f(mw - mx);
        a = fmaf(e, st[w * kWarpFloats + r * D + j], a);
        sum = fmaf(e, st[w * kWarpFloats + kMaxHeads * D + kMaxHeads + r], sum);
      }
    }
    store_output(out, partial, row, n_q_heads, hq0 + r, D, split, splits, j, a, mx * kLn2, sum);
  }
#else
  __trap();  // built for a device before sm_80: attention.cuh never launches it there
#endif
}

}  // namespace fastinfer::cuda::attention_mma_detail
