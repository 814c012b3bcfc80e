// The CUDA KV store in every KV format (f32, f16, bf16, int8, int4,
// fp8-e4m3, fp8-e5m2) against the CPU store fed the same K, V and queries
// (backend/cuda/kv_store.cuh and kv_format.cuh against
// backend/cpu/kv_store.hpp and kv/kv_quant.hpp). Without a CUDA device every
// case prints "FASTINFER_SKIP: skipped: no CUDA device" and CTest reports it
// skipped (label cuda).
//
// Tolerances:
//   codes and parameters after appends, copy-on-write, block copies and
//   swaps (whole arenas through block_storage, swap slots)    exact (same bytes)
//   read() rows                                               exact (same bits)
//   attention: decode (split keys), extend, a token tree      2e-5 abs (the stored
//                                         values are identical; f32 sums in another order),
//     f16 also on tensor cores (attention_mma.cuh)            the same 2e-5: q and the softmax
//                                         weights enter the MMAs as two f16 parts each
// Shapes: head_dim 8, 24, 40 and (attention) 80 (int4: one group per head,
// also above 32), 64, 128 (int4: groups of 32), block sizes 1 and 16, GQA
// 6:2, 2 layers; the byte case adds rows
// that reach the encoders' corners (all zero, constant, ties, signed zeros,
// an outlier, tiny values).
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "cuda_store_pair.cuh"
#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/backend/cuda/cuda_backend.cuh"

using namespace fastinfer;
using testing::StorePair;

namespace {

constexpr kv::QuantKind kFormats[] = {kv::QuantKind::F32,    kv::QuantKind::F16,  kv::QuantKind::BF16,
                                      kv::QuantKind::Int8,   kv::QuantKind::Int4, kv::QuantKind::FP8E4M3,
                                      kv::QuantKind::FP8E5M2};

kv::KVCacheConfig store_config(int d, int bs, int num_blocks) {
  kv::KVCacheConfig cfg;
  cfg.n_layers = 2, cfg.n_kv_heads = 2, cfg.head_dim = d, cfg.block_size = bs, cfg.num_blocks = num_blocks;
  return cfg;
}
KVOptions store_options(kv::QuantKind quant, int bs) {
  KVOptions o;
  o.layout = KVLayoutKind::Paged;
  o.quant = quant;
  o.block_size = bs;
  return o;
}
// A CPU and a CUDA store of the same shape: 2 layers, 2 KV heads, 6 query
// heads unless told.
StorePair store_pair(CudaBackend& gpu, kv::QuantKind quant, const kv::KVCacheConfig& cfg, int n_q = 6) {
  const KVOptions o = store_options(quant, cfg.block_size);
  return StorePair{cpu::make_kv_store(o, cfg),
                   gpu.make_kv_store(o, cfg),
                   &gpu,
                   cfg.n_layers,
                   cfg.n_kv_heads,
                   n_q,
                   cfg.head_dim};
}

// The attention kernels a format's case runs: f16 KV of head size 64 or
// 128 also through the tensor-core kernel (attention_mma.cuh), with 3 and
// with 16 query heads per KV head (the MMA's 16 rows, padded and full).
struct AttentionKernel {
  bool tensor_cores;
  int n_q;
};
std::vector<AttentionKernel> attention_kernels(kv::QuantKind quant, int d) {
  if (quant == kv::QuantKind::F16 && (d == 64 || d == 128)) return {{false, 6}, {true, 6}, {true, 32}};
  return {{false, 6}};
}

template <typename T>
bool same_bytes(const T* a, const T* b, std::size_t n) {
  return n == 0 || std::memcmp(a, b, sizeof(T) * n) == 0;
}

// Both stores' arenas, every block, codes and parameters (block_storage:
// host addresses on the CPU, device addresses on cuda): the same bytes.
void check_same_arenas(StorePair& p, int num_blocks) {
  const KVBlockStorage c = p.cpu->block_storage(), g = p.gpu->block_storage();
  REQUIRE(g.block_bytes == c.block_bytes);
  REQUIRE(g.block_params == c.block_params);
  REQUIRE((g.params == nullptr) == (c.params == nullptr));
  std::vector<std::uint8_t> codes(std::size_t(c.block_bytes) * std::size_t(num_blocks));
  cuda::copy_to_host(codes.data(), g.codes, codes.size(), p.backend->stream());
  CHECK(same_bytes(codes.data(), c.codes, codes.size()));
  std::vector<float> params(std::size_t(c.block_params) * std::size_t(num_blocks));
  cuda::copy_to_host(params.data(), g.params, params.size(), p.backend->stream());
  CHECK(same_bytes(params.data(), c.params, params.size()));
}

// read() of positions [0, length) of `seq`, every layer: the same bits.
void check_same_rows(StorePair& p, SeqId seq) {
  const std::size_t n = std::size_t(p.n_kv) * std::size_t(p.d);
  std::vector<float> ck(n), cv(n), gk(n), gv(n);
  for (int l = 0; l < p.n_layers; ++l)
    for (std::int64_t pos = 0; pos < p.cpu->length(seq); ++pos) {
      INFO("layer " << l << ", sequence " << seq << ", position " << pos);
      p.cpu->read(l, seq, pos, ck.data(), cv.data());
      p.gpu->read(l, seq, pos, gk.data(), gv.data());
      REQUIRE(same_bytes(ck.data(), gk.data(), n));
      REQUIRE(same_bytes(cv.data(), gv.data(), n));
    }
}

// Every block of `seq` swapped out of both stores: the same slot (codes,
// then parameters). The CPU's slot of the last block swapped into a spare
// CUDA block comes back out unchanged, and so does a device copy of it.
void check_swaps(StorePair& p, SeqId seq) {
  const std::size_t hb = p.cpu->host_block_bytes();
  REQUIRE(p.gpu->host_block_bytes() == hb);
  std::vector<std::uint8_t> hc(hb), hg(hb), back(hb);
  for (BlockId b : p.cpu->allocator().block_table(seq)) {
    INFO("block " << b);
    p.cpu->swap_out(b, hc.data());
    p.gpu->swap_out(b, hg.data());
    CHECK(hc == hg);
  }
  std::vector<BlockId> spares;
  for (int i = 0; i < 2; ++i) {
    spares.push_back(*p.cpu->allocator().allocate());
    REQUIRE(*p.gpu->allocator().allocate() == spares.back());
  }
  p.gpu->swap_in(hc.data(), spares[0]);
  p.gpu->swap_out(spares[0], back.data());
  CHECK(back == hc);
  p.gpu->copy_blocks({BlockCopy{spares[0], spares[1], 0}});
  p.gpu->swap_out(spares[1], back.data());
  CHECK(back == hc);
  // Through the store's own page-locked slots the swaps are queued, not
  // waited for: the stream orders them, and a blocking swap into pageable
  // memory after them sees their bytes.
  const HostSwapSlots slots = p.gpu->allocate_swap_slots(2);
  REQUIRE(slots.size() == 2);
  REQUIRE(slots.slot_bytes() == hb);
  p.gpu->swap_out(spares[0], slots.slot(1));
  p.gpu->swap_in(slots.slot(1), spares[1]);
  std::fill(back.begin(), back.end(), std::uint8_t(0));
  p.gpu->swap_out(spares[1], back.data());
  CHECK(back == hc);
  CHECK(std::equal(hc.begin(), hc.end(), slots.slot(1)));
  // A caller's own page-locked buffer is not the store's: the swap has
  // landed when swap_out returns, with no sync in between. The stream
  // sleeps first, so a queued copy could not have landed by the check.
  void* pinned = nullptr;
  REQUIRE(cudaHostAlloc(&pinned, hb, cudaHostAllocDefault) == cudaSuccess);
  const std::unique_ptr<void, cudaError_t (*)(void*)> free_pinned(pinned, cudaFreeHost);
  auto* mine = static_cast<std::uint8_t*>(pinned);
  std::fill(mine, mine + hb, std::uint8_t(0));
  REQUIRE(cudaLaunchHostFunc(
              p.backend->stream(), [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(50)); },
              nullptr) == cudaSuccess);
  p.gpu->swap_out(spares[0], mine);
  CHECK(std::equal(hc.begin(), hc.end(), mine));
  for (BlockId b : spares) {
    p.cpu->allocator().decref(b);
    p.gpu->allocator().decref(b);
  }
}

// Rows [tokens][2][d] reshaped so the encoders meet their corners: row r
// (counted across calls) is, by r % 8, as drawn (uniform in [-1, 1]), all
// zero (scale 0), constant (int4: hi == lo), coarse (multiples of 1/4: ties
// for the maximum and minimum, -0.0 among them), signed zeros with -0.0
// first (int4 stores the first minimum, -0.0), one outlier 50x, tiny
// (1e-5), large (3e4).
struct CornerRows {
  int d;
  std::int64_t row = 0;
  void operator()(std::vector<float>& x) {
    for (std::size_t at = 0; at < x.size(); at += std::size_t(d), ++row) {
      float* r = x.data() + at;
      switch (row % 8) {
        case 0:
          break;
        case 1:
          std::fill(r, r + d, 0.0f);
          break;
        case 2:
          std::fill(r, r + d, 0.3f);
          break;
        case 3:
          for (int j = 0; j < d; ++j) r[j] = std::round(r[j] * 4.0f) / 4.0f;
          break;
        case 4:
          for (int j = 0; j < d; ++j) r[j] = j % 2 == 0 ? -0.0f : 0.0f;
          r[d - 1] = 0.5f;
          break;
        case 5:
          r[row % d] *= 50.0f;
          break;
        case 6:
          for (int j = 0; j < d; ++j) r[j] *= 1e-5f;
          break;
        case 7:
          for (int j = 0; j < d; ++j) r[j] *= 3e4f;
          break;
      }
    }
  }
};

}  // namespace

TEST_CASE("cuda kv formats: make_kv_store takes every format, with the CPU store's sizes", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  for (kv::QuantKind quant : kFormats)
    for (int d : {8, 24, 40, 64, 128}) {
      INFO(kv::quant_name(quant) << ", head_dim " << d);
      const kv::KVCacheConfig cfg = store_config(d, 16, 8);
      const KVOptions o = store_options(quant, 16);
      const auto c = cpu::make_kv_store(o, cfg);
      const auto g = gpu.make_kv_store(o, cfg);
      CHECK(g->quant_name() == c->quant_name());
      CHECK(g->bytes_per_token() == c->bytes_per_token());
      CHECK(g->memory_bytes() == c->memory_bytes());
      CHECK(g->host_block_bytes() == c->host_block_bytes());
      CHECK(g->block_storage().block_params == c->block_storage().block_params);
    }
}

TEST_CASE("cuda kv formats: appends store the CPU's codes and parameters byte for byte", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  for (kv::QuantKind quant : kFormats)
    for (int d : {8, 24, 40, 64, 128})
      for (int bs : {1, 16}) {
        INFO(kv::quant_name(quant) << ", head_dim " << d << ", block size " << bs);
        const int num_blocks = 160 / bs + 8;
        StorePair p = store_pair(gpu, quant, store_config(d, bs, num_blocks));
        p.shape = CornerRows{d};
        for (SeqId s : {1, 2, 3}) {
          REQUIRE(p.cpu->add_sequence(s));
          REQUIRE(p.gpu->add_sequence(s));
        }
        // Several blocks each, then one-token steps, a ragged chunk.
        p.grow({1, 2, 3}, {3, 17, 33});
        p.grow({1, 2, 3}, {1, 1, 1});
        p.grow({2, 3}, {9, 20});
        check_same_arenas(p, num_blocks);
        // Rollback and a fork: the fork's first append copies the shared
        // block on write, parameters too.
        p.cpu->truncate(3, 21);
        p.gpu->truncate(3, 21);
        p.cpu->fork(3, 4);
        p.gpu->fork(3, 4);
        p.grow({3, 4}, {2, 3});
        check_same_arenas(p, num_blocks);
        for (SeqId s : {1, 2, 3, 4}) check_same_rows(p, s);
        check_swaps(p, 4);
      }
}

TEST_CASE("cuda kv formats: attention, copy-on-write, rollback and swaps match the CPU store", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  for (kv::QuantKind quant : kFormats)
    for (int d : {8, 24, 40, 64, 80, 128})
      for (int bs : {1, 16})
        for (const AttentionKernel kernel : attention_kernels(quant, d)) {
          INFO(kv::quant_name(quant) << ", head_dim " << d << ", block size " << bs << ", "
                                     << (kernel.tensor_cores ? "tensor cores, " : "f32 kernel, ")
                                     << kernel.n_q << " query heads");
          gpu.context().set_tensor_core_attention(kernel.tensor_cores);
          const int num_blocks = 1400 / bs + 64;
          StorePair p = store_pair(gpu, quant, store_config(d, bs, num_blocks), kernel.n_q);
          p.attention_scenario([&] { check_same_arenas(p, num_blocks); });
          p.compare({1, 2, 3, 4}, {1, 1, 1, 1}, {}, true);
          check_same_arenas(p, num_blocks);
          for (SeqId s : {1, 4}) check_same_rows(p, s);
          check_swaps(p, 3);
        }
}
