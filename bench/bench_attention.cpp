// Decode attention over a long paged KV cache, per quantization type:
// 8 sequences x 4096 tokens, 32 query heads, 8 KV heads, head size 128,
// 2 threads (the shape). bytes_per_second counts the KV bytes read
// (codes and scales, K and V); `of_stream` divides it by the streamed-read
// bandwidth measured at start-up in the same run (2 threads, 512 MiB), so
// the ratio survives a noisy machine better than either figure.
//
//   bench_attention --benchmark_format=json
//   BM_Decode<F16, Paged16> vs BM_Decode<F16, Contiguous>: the cost of the
//   block indirection at equal length.
//
// BM_DecodeLevel: the same decode at each CPU level (cpu_level.hpp) side by
// side, on the 110M shape (12 KV heads of 64, one query head each; `group`
// 4: 48 query heads on them, GQA), f16 and int8 KV, 1 or 4 sequences of 512
// or 4096 keys, one thread (a ratio between kernels, not a share of
// bandwidth): avx512 / avx2 / scalar (the reference) is what the per-ISA
// kernels buy. A level the host lacks is skipped.
//   bench_attention --benchmark_filter=BM_DecodeLevel
//
// BM_ExtendLevel: the causal attention of a 512-token prompt (the prefill's
// extend), 110M shape, f32 / bf16 / int8 KV, avx2 and avx512, one thread.
//   bench_attention --benchmark_filter=BM_ExtendLevel
//
// BM_VerifyLevel: one layer of a verify pass on the inflated stand-ins'
// heads (tinystories-656k's: 24 KV heads of 16, 48 query heads), a context
// of 100 tokens and 1 (decode), 8 or 16 new rows, f32 KV (the model's
// default), avx2 and avx512, one thread: what the attention adds to the
// cost of k rows (bench_speculative BM_Forward).
//   bench_attention --benchmark_filter=BM_VerifyLevel
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/backend/cpu/attention.hpp"
#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/kv/kv_cache.hpp"
#include "read_bandwidth.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace fastinfer;

namespace {

constexpr int kBatch = 8, kLen = 4096, kQHeads = 32, kKVHeads = 8, kHeadDim = 128, kThreads = 2;

// ---- streamed-read bandwidth (same approach as bench_bandwidth) -------------

constexpr std::size_t kStreamBytes = std::size_t(512) << 20;

// One timed pass: bytes read per second.
double stream_pass(const float* data, std::size_t count, int threads) {
  float total = 0.0f;
  const double bw = bench::timed_read_pass(data, count, threads, &total);
  benchmark::DoNotOptimize(total);
  return bw;
}

struct StreamBuffer : bench::ReadBuffer {
  StreamBuffer() : bench::ReadBuffer(kStreamBytes, kThreads) {}
};

// Best of 5 passes, 2 threads, measured once.
double stream_bandwidth() {
  static const double bw = [] {
    StreamBuffer b;
    double best = 0.0;
    for (int i = 0; i < 5; ++i) best = std::max(best, stream_pass(b.data, b.count, kThreads));
    return best;
  }();
  return bw;
}

void BM_StreamRead(benchmark::State& state) {
  StreamBuffer b;
  const int threads = int(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(stream_pass(b.data, b.count, threads));
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(kStreamBytes));
}
BENCHMARK(BM_StreamRead)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- decode attention --------------------------------------------------------

// Cheap deterministic fill: the values do not matter for speed.
struct Lcg {
  std::uint32_t s = 12345u;
  float operator()() {
    s = s * 1664525u + 1013904223u;
    return float(std::int32_t(s >> 8) - (1 << 23)) * (1.0f / float(1 << 23));
  }
};

// Adds sequences 0..batch-1 of `len` random tokens (token_floats values of
// K and of V each), their blocks interleaved 256 tokens at a time, as a
// server's pool would hold them; returns the block tables of all of them.
template <typename Cache>
kv::PagedKVTables fill_interleaved(Cache& cache, int batch, std::int64_t len, std::size_t token_floats, Lcg& rng,
                                    benchmark::State& state) {
  constexpr std::int64_t kStep = 256;
  std::vector<float> k(std::size_t(kStep) * token_floats), v(k.size());
  std::vector<SeqId> seqs;
  for (int b = 0; b < batch; ++b) {
    cache.add_sequence(b);
    seqs.push_back(b);
  }
  for (std::int64_t step = 0; step < len; step += kStep)
    for (int b = 0; b < batch; ++b) {
      const std::int64_t n = std::min(kStep, len - step);
      if (!cache.extend(b, n)) {
        state.SkipWithError("pool too small");
        return cache.tables(seqs);
      }
      for (auto& x : k) x = rng();
      for (auto& x : v) x = rng();
      cache.append(0, b, k.data(), v.data(), n);
    }
  return cache.tables(seqs);
}

template <typename Layout, typename Quant>
void BM_Decode(benchmark::State& state) {
  kv::KVCacheConfig c;
  c.n_layers = 1;
  c.n_kv_heads = kKVHeads;
  c.head_dim = kHeadDim;
  c.block_size = 16;
  if constexpr (std::is_same_v<Layout, kv::Contiguous>) {
    c.max_seq_len = kLen;
    c.num_blocks = kBatch;
  } else {
    c.num_blocks = kBatch * kLen / 16;
  }
  kv::KVCache<Layout, Quant> cache(c);
  Lcg rng;
  const auto tables = fill_interleaved(cache, kBatch, kLen, std::size_t(kKVHeads) * kHeadDim, rng, state);
  const auto view = cache.view(tables, 0);
  std::vector<float> q(std::size_t(kBatch) * kQHeads * kHeadDim), out(q.size());
  for (auto& x : q) x = rng();
  const auto plan = cpu::plan_decode(view);
  for (auto _ : state) {
    cpu::decode_attention(view, q.data(), out.data(), kQHeads, plan, kThreads);
    benchmark::DoNotOptimize(out.data());
  }
  const double kv_bytes =
      2.0 * kBatch * kLen * kKVHeads * double(kv::bytes_per_token_head<Quant>(kHeadDim));
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * kv_bytes));
  // (KV bytes / s) / (stream bytes / s): the share of the read ceiling.
  state.counters["of_stream"] =
      benchmark::Counter(kv_bytes / stream_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["stream_GBps"] = stream_bandwidth() * 1e-9;
  state.counters["items"] = double(plan.items.size());
}

using Paged16 = kv::Paged<16>;
BENCHMARK_TEMPLATE(BM_Decode, Paged16, kv::F32)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, Paged16, kv::F16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, Paged16, kv::BF16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, Paged16, kv::Int8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, Paged16, kv::Int4)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, Paged16, kv::FP8E4M3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, Paged16, kv::FP8E5M2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, kv::Contiguous, kv::F16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_Decode, kv::Contiguous, kv::Int8)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- decode attention per CPU level (the 110M shape) -------------------------

constexpr int kHeads = 12, kDim = 64;  // the 110M shape's KV heads

// False, and the benchmark skipped, when this CPU lacks `level`.
bool has_level(cpu::CpuLevel level, benchmark::State& state) {
  if (level <= cpu::detected_cpu_level()) return true;
  state.SkipWithError("this CPU lacks the level");
  return false;
}

// One layer of 16-token blocks, room for `batch` sequences of `len` tokens.
kv::KVCacheConfig level_config(int batch, std::int64_t len) {
  kv::KVCacheConfig c;
  c.n_layers = 1;
  c.n_kv_heads = kHeads;
  c.head_dim = kDim;
  c.block_size = 16;
  c.num_blocks = std::int32_t(batch * ((len + 15) / 16));
  return c;
}

template <typename Quant>
void BM_DecodeLevel(benchmark::State& state) {
  const auto level = cpu::CpuLevel(state.range(0));
  const int batch = int(state.range(1));
  const std::int64_t len = state.range(2);
  const int group = int(state.range(3));
  const int q_heads = kHeads * group;
  if (!has_level(level, state)) return;
  cpu::CpuLevelScope scope(level);
  kv::KVCache<kv::Paged<16>, Quant> cache(level_config(batch, len));
  Lcg rng;
  const auto tables = fill_interleaved(cache, batch, len, std::size_t(kHeads) * kDim, rng, state);
  const auto view = cache.view(tables, 0);
  std::vector<float> q(std::size_t(batch) * q_heads * kDim), out(q.size());
  for (auto& x : q) x = rng();
  const auto plan = cpu::plan_decode(view);
  for (auto _ : state) {
    cpu::decode_attention(view, q.data(), out.data(), q_heads, plan, 1);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(std::string(cpu::cpu_level_name(level)) + " kernel " + cpu::attention_kernel_isa(level, kDim));
  state.SetItemsProcessed(std::int64_t(state.iterations()) * batch * len);  // keys per second
}

void level_args(benchmark::internal::Benchmark* b) {
  const int shapes[][3] = {{1, 512, 1}, {1, 4096, 1}, {4, 512, 1}, {4, 4096, 1}, {1, 4096, 4}};  // seqs, keys, group
  for (const auto& sh : shapes)
    for (int level = 0; level <= int(cpu::CpuLevel::avx512); ++level) b->Args({level, sh[0], sh[1], sh[2]});
  b->ArgNames({"level", "seqs", "keys", "group"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}
BENCHMARK_TEMPLATE(BM_DecodeLevel, kv::F16)->Apply(level_args);
BENCHMARK_TEMPLATE(BM_DecodeLevel, kv::Int8)->Apply(level_args);

// ---- extend attention per CPU level (a 110M prefill) --------------------------

// The attention of a whole 512-token prompt: 512 causal queries over their
// own keys, 12 heads of 64 (one query head per KV head), one thread: the
// extend part of a 110M pp512 for one layer. Keys per second counts the
// (query, key) pairs, n (n + 1) / 2 per head.
template <typename Quant>
void BM_ExtendLevel(benchmark::State& state) {
  const auto level = cpu::CpuLevel(state.range(0));
  const std::int64_t n = state.range(1);
  if (!has_level(level, state)) return;
  cpu::CpuLevelScope scope(level);
  kv::KVCache<kv::Paged<16>, Quant> cache(level_config(1, n));
  Lcg rng;
  const auto tables = fill_interleaved(cache, 1, n, std::size_t(kHeads) * kDim, rng, state);
  const auto view = cache.view(tables, 0);
  std::vector<float> q(std::size_t(n) * kHeads * kDim), out(q.size());
  for (auto& x : q) x = rng();
  const std::int32_t qo[2] = {0, std::int32_t(n)};
  for (auto _ : state) {
    cpu::extend_attention(view, q.data(), qo, out.data(), kHeads, 1);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(std::string(cpu::cpu_level_name(level)) + " kernel " + cpu::attention_kernel_isa(level, kDim));
  state.SetItemsProcessed(std::int64_t(state.iterations()) * n * (n + 1) / 2);
}

void extend_args(benchmark::internal::Benchmark* b) {
  for (int level = int(cpu::CpuLevel::avx2); level <= int(cpu::CpuLevel::avx512); ++level) b->Args({level, 512});
  b->ArgNames({"level", "queries"})->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK_TEMPLATE(BM_ExtendLevel, kv::F32)->Apply(extend_args);
BENCHMARK_TEMPLATE(BM_ExtendLevel, kv::BF16)->Apply(extend_args);
BENCHMARK_TEMPLATE(BM_ExtendLevel, kv::Int8)->Apply(extend_args);

// One layer of a pass of `rows` new tokens after a 100-token context, the
// inflated stand-ins' attention shape; rows 1 is the decode step.
void BM_VerifyLevel(benchmark::State& state) {
  constexpr int kVerifyKVHeads = 24, kVerifyQHeads = 48, kVerifyDim = 16, kContext = 100;
  const auto level = cpu::CpuLevel(state.range(0));
  const int rows = int(state.range(1));
  if (!has_level(level, state)) return;
  cpu::CpuLevelScope scope(level);
  kv::KVCacheConfig c = level_config(1, kContext + rows);
  c.n_kv_heads = kVerifyKVHeads;
  c.head_dim = kVerifyDim;
  kv::KVCache<kv::Paged<16>, kv::F32> cache(c);
  Lcg rng;
  const auto tables =
      fill_interleaved(cache, 1, kContext + rows, std::size_t(kVerifyKVHeads) * kVerifyDim, rng, state);
  const auto view = cache.view(tables, 0);
  std::vector<float> q(std::size_t(rows) * kVerifyQHeads * kVerifyDim), out(q.size());
  for (auto& x : q) x = rng();
  const std::int32_t qo[2] = {0, rows};
  for (auto _ : state) {
    if (rows == 1)
      cpu::decode_attention(view, q.data(), out.data(), kVerifyQHeads, 1);
    else
      cpu::extend_attention(view, q.data(), qo, out.data(), kVerifyQHeads, 1);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(std::string(cpu::cpu_level_name(level)) + " kernel " +
                 cpu::attention_kernel_isa(level, kVerifyDim));
  state.SetItemsProcessed(std::int64_t(state.iterations()) * rows);  // query rows per second
}
BENCHMARK(BM_VerifyLevel)
    ->ArgsProduct({{int(cpu::CpuLevel::avx2), int(cpu::CpuLevel::avx512)}, {1, 8, 16}})
    ->ArgNames({"level", "rows"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

FASTINFER_BENCHMARK_MAIN()
