// Throughput of the number-format conversions (backend/cpu/convert.hpp),
// vectorised against the scalar reference loop, at an L1-resident and an
// L2/L3-sized length; and, since it is the other consumer of these numerics,
// the cost of one sample() call over a 32000-token vocabulary.
//
//   build-*/bench/bench_convert --benchmark_format=json
//
// bytes_per_second counts source plus destination bytes.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/backend/cpu/convert.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"

namespace {

namespace cpu = fastinfer::cpu;

std::vector<float> random_floats(std::size_t n) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 4.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

template <class Src, class Dst, class Fn>
void run(benchmark::State& state, const std::vector<Src>& src, Fn fn) {
  std::vector<Dst> dst(src.size());
  for (auto _ : state) {
    fn(src.data(), dst.data(), std::int64_t(src.size()));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * std::int64_t(src.size()));
  state.SetBytesProcessed(state.iterations() * std::int64_t(src.size() * (sizeof(Src) + sizeof(Dst))));
}

// Encode: f32 -> T. Decode: T -> f32, from codes made by the scalar encoder.
template <class T, T (*Encode)(float), void (*Vec)(const float*, T*, std::int64_t)>
void BM_encode(benchmark::State& state) {
  run<float, T>(state, random_floats(std::size_t(state.range(0))), Vec);
}
template <class T, T (*Encode)(float)>
void BM_encode_scalar(benchmark::State& state) {
  run<float, T>(state, random_floats(std::size_t(state.range(0))),
                [](const float* s, T* d, std::int64_t n) { cpu::reference::convert_array(s, d, n, Encode); });
}
template <class T, T (*Encode)(float), void (*Vec)(const T*, float*, std::int64_t)>
void BM_decode(benchmark::State& state) {
  const std::vector<float> f = random_floats(std::size_t(state.range(0)));
  std::vector<T> codes(f.size());
  cpu::reference::convert_array(f.data(), codes.data(), std::int64_t(f.size()), Encode);
  run<T, float>(state, codes, Vec);
}
template <class T, T (*Encode)(float), float (*Decode)(T)>
void BM_decode_scalar(benchmark::State& state) {
  const std::vector<float> f = random_floats(std::size_t(state.range(0)));
  std::vector<T> codes(f.size());
  cpu::reference::convert_array(f.data(), codes.data(), std::int64_t(f.size()), Encode);
  run<T, float>(state, codes,
                [](const T* s, float* d, std::int64_t n) { cpu::reference::convert_array(s, d, n, Decode); });
}

using U16 = std::uint16_t;
using U8 = std::uint8_t;

#define FASTINFER_BENCH_FORMAT(name, T, enc, dec)                         \
  BENCHMARK_TEMPLATE(BM_encode, T, fastinfer::enc, cpu::convert_##enc<>)  \
      ->Name("encode_" name)                                              \
      ->Arg(4096)                                                         \
      ->Arg(1 << 20);                                                     \
  BENCHMARK_TEMPLATE(BM_encode_scalar, T, fastinfer::enc)                 \
      ->Name("encode_" name "_scalar")                                    \
      ->Arg(4096)                                                         \
      ->Arg(1 << 20);                                                     \
  BENCHMARK_TEMPLATE(BM_decode, T, fastinfer::enc, cpu::convert_##dec<>)  \
      ->Name("decode_" name)                                              \
      ->Arg(4096)                                                         \
      ->Arg(1 << 20);                                                     \
  BENCHMARK_TEMPLATE(BM_decode_scalar, T, fastinfer::enc, fastinfer::dec) \
      ->Name("decode_" name "_scalar")                                    \
      ->Arg(4096)                                                         \
      ->Arg(1 << 20)

FASTINFER_BENCH_FORMAT("bf16", U16, f32_to_bf16, bf16_to_f32);
FASTINFER_BENCH_FORMAT("f16", U16, f32_to_f16, f16_to_f32);
FASTINFER_BENCH_FORMAT("fp8e4m3", U8, f32_to_fp8e4m3, fp8e4m3_to_f32);
FASTINFER_BENCH_FORMAT("fp8e5m2", U8, f32_to_fp8e5m2, fp8e5m2_to_f32);

// One sample() per iteration over 32000 logits, with a new coin each time.
void BM_sample(benchmark::State& state) {
  const std::int64_t n = 32000;
  const std::vector<float> logits = random_floats(std::size_t(n));
  fastinfer::SamplingParams params;
  params.temperature = state.range(0) == 0 ? 0.0f : 0.8f;
  params.top_k = int(state.range(1));
  params.top_p = float(state.range(2)) / 100.0f;
  cpu::SamplerWorkspace ws(n);
  std::uint64_t t = 0;
  for (auto _ : state) benchmark::DoNotOptimize(cpu::sample_at_index(logits.data(), n, params, t++, ws));
  state.SetItemsProcessed(state.iterations());
}
// Args: temperature on/off, top_k, top_p in percent.
BENCHMARK(BM_sample)
    ->ArgNames({"temp", "top_k", "top_p_pct"})
    ->Args({0, 0, 100})
    ->Args({1, 0, 100})
    ->Args({1, 40, 100})
    ->Args({1, 40, 90})
    ->Args({1, 0, 90});

}  // namespace

FASTINFER_BENCHMARK_MAIN()
