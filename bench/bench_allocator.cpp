// The PagedAllocator's speed, and the memory a paged KV cache wastes next to
// a maximum-length contiguous reservation.
//
//   bench_allocator --benchmark_format=json
// BM_AllocateFree: items_per_second = allocate+free pairs per second (target
//   >= 10 M/s).
// BM_MemoryWaste/<block size>: counters paged_waste_pct and
//   contiguous_waste_pct for 1000 sequences of lengths uniform in 16..2048
//   (maximum 2048): the share of allocated token slots that hold no token.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "bench_env.hpp"
#include "fastinfer/memory/paged_allocator.hpp"

using namespace fastinfer;

namespace {

void BM_AllocateFree(benchmark::State& state) {
  PagedAllocator a(4096, 16);
  // Keep half the pool busy so the free list is not trivially one block.
  std::vector<BlockId> held;
  for (int i = 0; i < 2048; ++i) held.push_back(*a.allocate());
  for (auto _ : state) {
    const BlockId b = *a.allocate();
    benchmark::DoNotOptimize(b);
    a.decref(b);
  }
  state.SetItemsProcessed(std::int64_t(state.iterations()));
}
BENCHMARK(BM_AllocateFree);

// A burst of 64 allocations then 64 frees: the free list really moves.
void BM_AllocateFreeBurst(benchmark::State& state) {
  PagedAllocator a(4096, 16);
  BlockId ids[64];
  for (auto _ : state) {
    for (auto& b : ids) b = *a.allocate();
    benchmark::DoNotOptimize(ids);
    for (BlockId b : ids) a.decref(b);
  }
  state.SetItemsProcessed(std::int64_t(state.iterations()) * 64);
}
BENCHMARK(BM_AllocateFreeBurst);

// A sequence's life: add, grow by decode steps of one token, fork, free.
void BM_SequenceLife(benchmark::State& state) {
  PagedAllocator a(1 << 16, 16);
  SeqId id = 0;
  for (auto _ : state) {
    const SeqId s = id++;
    a.add_sequence(s);
    for (int t = 0; t < 256; ++t) a.extend(s, 1);
    a.fork(s, s + (1 << 30));
    a.free_sequence(s + (1 << 30));
    a.free_sequence(s);
  }
  state.SetItemsProcessed(std::int64_t(state.iterations()) * 256);  // tokens appended
}
BENCHMARK(BM_SequenceLife);

void BM_MemoryWaste(benchmark::State& state) {
  const std::int32_t bs = std::int32_t(state.range(0));
  constexpr int kSeqs = 1000, kMax = 2048;
  std::mt19937 rng(42);
  std::uniform_int_distribution<int> len(16, kMax);
  std::vector<int> lengths(kSeqs);
  for (auto& l : lengths) l = len(rng);
  double paged = 0.0, contiguous = 0.0;
  for (auto _ : state) {
    PagedAllocator a(kSeqs * (kMax / bs + 1), bs);
    std::int64_t tokens = 0;
    for (int s = 0; s < kSeqs; ++s) {
      a.add_sequence(s);
      a.extend(s, lengths[std::size_t(s)]);
      tokens += lengths[std::size_t(s)];
    }
    const double slots = double(a.stats().used) * bs;
    paged = 100.0 * (1.0 - double(tokens) / slots);
    contiguous = 100.0 * (1.0 - double(tokens) / (double(kSeqs) * kMax));
  }
  state.counters["paged_waste_pct"] = paged;
  state.counters["contiguous_waste_pct"] = contiguous;
}
BENCHMARK(BM_MemoryWaste)->Arg(1)->Arg(16)->Arg(32)->Arg(128)->Iterations(1);

}  // namespace

FASTINFER_BENCHMARK_MAIN()
