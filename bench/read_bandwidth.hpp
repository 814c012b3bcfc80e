// Streamed-read bandwidth, the ceiling for memory-bound work: sums a large
// float buffer with several threads, each reading one contiguous run of whole
// cache lines with 4 independent vector accumulators. The buffer comes from
// the allocator of the model's weights (core/aligned_buffer.hpp: 2 MiB
// aligned, huge pages asked for), so that the ceiling is measured on the same
// kind of pages decode streams (with 4 KiB pages this machine read 24-31 GB/s
// on two threads where huge-page weights streamed 45-48).
// Shared by bench_bandwidth, bench_attention and bench_kernels.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "fastinfer/backend/cpu/xsimd_compat.hpp"
#include "fastinfer/core/aligned_buffer.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastinfer::bench {

// `bytes` of floats, aligned as weights are, every page touched (in parallel, like
// the reads, with `threads` threads; 0: OpenMP's default) so that the first
// timed pass does not pay for page faults.
struct ReadBuffer {
  std::shared_ptr<std::uint8_t> owner;
  float* data = nullptr;
  std::size_t count = 0;

  explicit ReadBuffer(std::size_t bytes, int threads = 0)
      : owner(fastinfer::detail::aligned_buffer(bytes)),
        data(reinterpret_cast<float*>(owner.get())),
        count(bytes / sizeof(float)) {
#if defined(_OPENMP)
    const int nt = threads > 0 ? threads : omp_get_max_threads();
#else
    const int nt = 1;
    (void)threads;
#endif
#pragma omp parallel for schedule(static) num_threads(nt)
    for (std::int64_t i = 0; i < std::int64_t(count); ++i) data[i] = float(i & 1023) * 1e-3f;
    (void)nt;
  }
  ReadBuffer(const ReadBuffer&) = delete;
  ReadBuffer& operator=(const ReadBuffer&) = delete;

  std::size_t bytes() const { return count * sizeof(float); }
};

// Sum of [p, p + n) (p 64-byte aligned) with 4 independent vector accumulators.
inline float read_sum(const float* p, std::size_t n) {
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
  float s = cpu::xsimd_compat::reduce_add((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += p[i];
  return s;
}

// One streamed pass over [data, data + count) with `threads` threads, each
// summing one contiguous run of whole cache lines (16 floats); the total.
inline float read_pass(const float* data, std::size_t count, int threads) {
  float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    int t = 0, nt = 1;
#if defined(_OPENMP)
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    const std::size_t lines = count / 16;
    const std::size_t begin = lines * std::size_t(t) / std::size_t(nt) * 16;
    const std::size_t end = lines * std::size_t(t + 1) / std::size_t(nt) * 16;
    total += read_sum(data + begin, end - begin);
  }
  (void)threads;
  return total;
}

// One pass timed by the wall clock: bytes read per second. The sum is
// written to `*sink` so that the pass cannot be optimized away.
inline double timed_read_pass(const float* data, std::size_t count, int threads, float* sink) {
  const auto t0 = std::chrono::steady_clock::now();
  *sink = read_pass(data, count, threads);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(count * sizeof(float)) / s;
}

}  // namespace fastinfer::bench
