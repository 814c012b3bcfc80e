// Streamed-read bandwidth: the ceiling for memory-bound decode, where every
// token streams every weight once. Sums a 1 GiB float buffer (far beyond the
// 32 MiB L3) with 1 and 2 threads, each thread reading one contiguous half.
//
//   bench_bandwidth --benchmark_format=json
// bytes_per_second is the figure decode efficiency is measured against.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <xsimd/xsimd.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

constexpr std::size_t kBytes = std::size_t(1) << 30;

struct Buffer {
  float* data = nullptr;
  std::size_t count = 0;
  Buffer() {
    count = kBytes / sizeof(float);
    data = static_cast<float*>(std::aligned_alloc(64, kBytes));
    // Touch every page (in parallel, like the reads) so that the first timed
    // pass does not pay for page faults.
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < std::int64_t(count); ++i) data[i] = float(i & 1023) * 1e-3f;
  }
  ~Buffer() { std::free(data); }
};

Buffer& buffer() {
  static Buffer b;
  return b;
}

// Sum of [p, p + n) with 4 independent vector accumulators.
float read_sum(const float* p, std::size_t n) {
  using B = xsimd::batch<float>;
  constexpr std::size_t L = B::size;
  B a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
  std::size_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    a0 += B::load_aligned(p + i);
    a1 += B::load_aligned(p + i + L);
    a2 += B::load_aligned(p + i + 2 * L);
    a3 += B::load_aligned(p + i + 3 * L);
  }
  float s = xsimd::hadd((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += p[i];
  return s;
}

void BM_ReadSum(benchmark::State& state) {
  const int threads = int(state.range(0));
  Buffer& b = buffer();
  for (auto _ : state) {
    float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      int t = 0, nt = 1;
#if defined(_OPENMP)
      t = omp_get_thread_num();
      nt = omp_get_num_threads();
#endif
      // Whole cache lines per thread: 16 floats.
      const std::size_t lines = b.count / 16;
      const std::size_t begin = lines * std::size_t(t) / std::size_t(nt) * 16;
      const std::size_t end = lines * std::size_t(t + 1) / std::size_t(nt) * 16;
      total += read_sum(b.data + begin, end - begin);
    }
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

BENCHMARK_MAIN();
