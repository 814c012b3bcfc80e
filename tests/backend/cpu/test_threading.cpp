// The thread-count policy and the static partition kernels rely on for
// thread-count-independent results.
#include <catch2/catch.hpp>

#include <atomic>
#include <vector>

#include "fastinfer/backend/cpu/threading.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace fastinfer::cpu;

TEST_CASE("threads_for keeps small work on one thread and never exceeds the grant") {
  CHECK(threads_for(100, 1000, 2) == 1);
  CHECK(threads_for(1999, 1000, 2) == 1);
  CHECK(threads_for(1000000, 1000, 1) == 1);
  CHECK(threads_for(1000000, 1000, 0) == 1);
#if defined(_OPENMP)
  CHECK(threads_for(2000, 1000, 2) == 2);
  CHECK(threads_for(1000000, 1000, 2) == 2);
  CHECK(threads_for(3500, 1000, 8) == 3);
#endif
  // stories260K's largest matrix (vocab 512 x dim 64, f32: 128 KiB) stays on one thread.
  CHECK(threads_for(512 * 64 * 4, ParallelThresholds::kMatvecBytesPerThread, 2) == 1);
  // The 110M model's smallest (768 x 768 f32) does not.
#if defined(_OPENMP)
  CHECK(threads_for(768 * 768 * 4, ParallelThresholds::kMatvecBytesPerThread, 2) == 2);
#endif
}

TEST_CASE("static_share partitions into contiguous grain-aligned ranges that cover everything once") {
  for (std::int64_t count : {0, 1, 3, 4, 5, 17, 100, 1031})
    for (std::int64_t grain : {1, 4, 96})
      for (int nt : {1, 2, 3, 7}) {
        std::int64_t next = 0;
        for (int i = 0; i < nt; ++i) {
          const Range r = static_share(count, grain, i, nt);
          REQUIRE(r.begin == next);
          REQUIRE(r.end >= r.begin);
          if (r.end < count) REQUIRE(r.end % grain == 0);
          next = r.end;
        }
        REQUIRE(next == count);
      }
}

TEST_CASE("parallel_ranges runs inline for one thread and splits for two") {
  std::vector<int> hits(1000, 0);
  std::atomic<int> calls{0};
  parallel_ranges(1000, 4, 1, [&](std::int64_t b, std::int64_t e) {
#if defined(_OPENMP)
    CHECK_FALSE(omp_in_parallel());
#endif
    ++calls;
    for (auto i = b; i < e; ++i) ++hits[std::size_t(i)];
  });
  CHECK(calls == 1);
  for (int h : hits) REQUIRE(h == 1);

  std::vector<int> owner(1000, -1);
  parallel_ranges(1000, 4, 2, [&](std::int64_t b, std::int64_t e) {
    int me = 0;
#if defined(_OPENMP)
    me = omp_get_thread_num();
#endif
    for (auto i = b; i < e; ++i) owner[std::size_t(i)] = me;
  });
  for (int o : owner) REQUIRE(o >= 0);
#if defined(_OPENMP)
  CHECK(owner.front() == 0);
  CHECK(owner.back() == 1);
#endif
}
