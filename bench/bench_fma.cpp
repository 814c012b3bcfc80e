// FMA peak per ISA level, the compute ceiling of the roofline (fma_peak.hpp):
// 12 register-resident multiply-add chains per thread, no memory traffic.
//
//   bench_fma --benchmark_format=json
// BM_FmaPeak/<level>/threads: counters gflops, lanes; levels the CPU lacks
// are skipped with a message. Level 0 sse2 (no FMA), 1 avx2 (fma3), 2 avx512.
// Rates are over wall time: CPU time counts only the main thread, which
// sleeps at the barrier under OMP_WAIT_POLICY=passive and inflates a
// threaded rate. On a shared machine take the best of repetitions, and the
// 1-thread row times the threads as the cores' peak (scripts/report.sh does).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

#include "bench_env.hpp"
#include "fma_peak.hpp"

namespace {

void BM_FmaPeak(benchmark::State& state) {
  static const char* const kLevels[] = {"sse2", "avx2", "avx512"};
  const std::string level = kLevels[state.range(0)];
  const int threads = int(state.range(1));
  state.SetLabel(level);
  float sink = 0.0f;
  if (fastinfer::bench::fma_run_gflops(level, 1, 16, &sink) <= 0) {
    state.SkipWithError(("skipped: this CPU has no " + level).c_str());
    for (auto _ : state) {
    }
    return;
  }
  constexpr std::int64_t kIters = 1 << 20;
  double flops = 0;
  for (auto _ : state) {
    fastinfer::bench::fma_run_gflops(level, threads, kIters, &sink);
    benchmark::DoNotOptimize(sink);
    flops += fastinfer::bench::fma_flops(level, kIters) * threads;
  }
  state.counters["gflops"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsRate);
  state.counters["lanes"] = fastinfer::bench::fma_lanes(level);
  state.counters["threads"] = threads;
}

}  // namespace

BENCHMARK(BM_FmaPeak)
    ->ArgNames({"level", "threads"})
    ->ArgsProduct({{0, 1, 2}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

FASTINFER_BENCHMARK_MAIN()
