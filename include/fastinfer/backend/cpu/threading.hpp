// How many threads an operation deserves, and the one way kernels fork.
//
// The caller grants at most `threads`; a kernel asks threads_for() how many of
// them its work pays for. Below the threshold it runs on the calling thread
// with no OpenMP region at all: a fork/join costs microseconds, more than a
// whole 64x64 matvec, which is why llama.cpp decodes stories260K four times
// slower on 2 threads than on 1.
//
// Partitions are static and contiguous, and callers make each output element
// the work of exactly one thread with a fixed order of summation, so results
// never depend on the thread count (greedy decisions must not).
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastinfer::cpu {

// Work below which a kernel stays on one thread, per kind of work. Measured on
// Zen 3 (bench_kernels, small matvec / matmul): an OpenMP hand-off to a second
// thread costs ~1-3 us, so each extra thread needs a few microseconds of work.
struct ParallelThresholds {
  // Weight bytes streamed by a matrix-vector product, per thread.
  static constexpr std::int64_t kMatvecBytesPerThread = 256 * 1024;
  // Multiply-adds of a matrix-matrix product, per thread.
  static constexpr std::int64_t kMatmulMacsPerThread = 2 * 1000 * 1000;
};

// Threads to use for `work` units when each thread needs at least
// `min_work_per_thread` of them: between 1 and `threads` (1 without OpenMP).
inline int threads_for(std::int64_t work, std::int64_t min_work_per_thread, int threads) {
#if defined(_OPENMP)
  if (threads <= 1 || work < 2 * min_work_per_thread) return 1;
  const std::int64_t useful = work / std::max<std::int64_t>(min_work_per_thread, 1);
  return int(std::min<std::int64_t>(threads, useful));
#else
  (void)work;
  (void)min_work_per_thread;
  (void)threads;
  return 1;
#endif
}

// The contiguous share [begin, end) of `count` items, in whole multiples of
// `grain` (except the last), that thread `index` of `nthreads` owns.
struct Range {
  std::int64_t begin = 0;
  std::int64_t end = 0;
};
inline Range static_share(std::int64_t count, std::int64_t grain, int index, int nthreads) {
  const std::int64_t blocks = (count + grain - 1) / grain;
  const std::int64_t base = blocks / nthreads, extra = blocks % nthreads;
  const std::int64_t first = index * base + std::min<std::int64_t>(index, extra);
  const std::int64_t n = base + (index < extra ? 1 : 0);
  return {std::min(first * grain, count), std::min((first + n) * grain, count)};
}

// Calls body(begin, end) on `nthreads` threads over static contiguous shares
// of [0, count). With one thread it is a plain call: no OpenMP region.
template <typename Body>
inline void parallel_ranges(std::int64_t count, std::int64_t grain, int nthreads, Body&& body) {
  if (count <= 0) return;
#if defined(_OPENMP)
  if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
    {
      // The runtime may give fewer threads than asked (nested regions,
      // OMP_THREAD_LIMIT): split over the threads that actually exist.
      const Range r = static_share(count, grain, omp_get_thread_num(), omp_get_num_threads());
      if (r.begin < r.end) body(r.begin, r.end);
    }
    return;
  }
#endif
  (void)nthreads;
  (void)grain;
  body(std::int64_t(0), count);
}

}  // namespace fastinfer::cpu
