// Streamed-read bandwidth: the ceiling for memory-bound decode, where every
// token streams every weight once. Sums a 1 GiB float buffer (far beyond the
// 32 MiB L3) with 1 and 2 threads, each thread reading one contiguous half.
//
//   bench_bandwidth --benchmark_format=json
// bytes_per_second is the figure decode efficiency is measured against.
#include <benchmark/benchmark.h>

#include <cstdint>

#include "bench_env.hpp"
#include "read_bandwidth.hpp"

namespace {

constexpr std::size_t kBytes = std::size_t(1) << 30;

fastinfer::bench::ReadBuffer& buffer() {
  static fastinfer::bench::ReadBuffer b(kBytes);
  return b;
}

void BM_ReadSum(benchmark::State& state) {
  const int threads = int(state.range(0));
  fastinfer::bench::ReadBuffer& b = buffer();
  for (auto _ : state) {
    float total = fastinfer::bench::read_pass(b.data, b.count, threads);
    benchmark::DoNotOptimize(total);
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(kBytes));
  state.counters["threads"] = threads;
}

}  // namespace

BENCHMARK(BM_ReadSum)
    ->Arg(1)
    ->Arg(2)
    ->ArgName("threads")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(1.0);

FASTINFER_BENCHMARK_MAIN()
