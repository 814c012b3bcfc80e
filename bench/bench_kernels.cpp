// CPU kernel throughput, to compare with the machine's ceilings.
//
//   bench_kernels --benchmark_format=json
//
// * BM_ReadSum: streamed read of 1 GiB (as bench_bandwidth), so that the
//   matvec figures can be divided by the ceiling measured in the same run.
// * BM_DecodeMatvec/<dtype>/threads: one token's matrix-vector products over
//   the 110M shape (dim 768, hidden 2048, 12 layers, vocab 32000: 438 MB of
//   f32 weights); bytes_per_second = weight bytes streamed, comparable to the
//   read bandwidth; tokens/s is items_per_second.
// * BM_PassMatmul/<dtype>/n/threads: the matrix products of a verify pass
//   over n rows (every 110M matrix, n activation rows), CPU time: the
//   kernels' cost(n)/cost(1), at the CPU level chosen at run time (the
//   label names the float kernels; FASTINFER_CPU_LEVEL=avx2 measures the
//   AVX2 tiles on an AVX-512 machine).
// * BM_Matmul/<dtype>/rows/cols/n/threads: prefill products (n = 512) and
//   small batches (n = 4, 16, 32: dot-product tiles); the FLOPS counter
//   is 2 * rows * cols * n per second (Zen 3 peak: 32 flop/cycle/core).
// * BM_Prefill/<ours|eigen>/<dtype>/rows/cols/n/threads: prefill products
//   through our packed GEMM (cpu::matmul, n > 32) and through the Eigen GEMM
//   it replaced (eigen_gemm.hpp; only when Eigen is installed: the library
//   itself needs none), side by side, in process CPU time (all
//   threads): FLOPS is per core-second, peak_frac = FLOPS over one core's FMA
//   peak at the current level's width (fma_peak.hpp, CPU time, same run).
//   Ours runs at the CPU level chosen at run time; Eigen at the build's flags.
// * BM_FmaPeak/threads: the FMA throughput of the cores (12 independent
//   256-bit FMA chains per thread, fma_peak.hpp), the ceiling the matmul
//   FLOPS compare with.
// * BM_SmallDecode/threads: the matvecs and vector kernels of one stories260K
//   token (dim 64, hidden 172, 5 layers, vocab 512): 2 threads must not be
//   slower than 1.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <map>
#include <string>
#include <utility>
#include <memory>
#include <vector>

#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/core/aligned_buffer.hpp"
#if FASTINFER_BENCH_WITH_EIGEN
#include "eigen_gemm.hpp"
#endif
#include "bench_env.hpp"
#include "fma_peak.hpp"
#include "read_bandwidth.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace fastinfer;

namespace {

// ---- read ceiling -----------------------------------------------------------
constexpr std::size_t kReadBytes = std::size_t(1) << 30;

void BM_ReadSum(benchmark::State& state) {
  const int threads = int(state.range(0));
  static const bench::ReadBuffer buffer(kReadBytes);
  for (auto _ : state) {
    float total = bench::read_pass(buffer.data, buffer.count, threads);
    benchmark::DoNotOptimize(total);
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(kReadBytes));
}
BENCHMARK(BM_ReadSum)->Arg(1)->Arg(2)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- weights ----------------------------------------------------------------
struct Shape {
  int dim, hidden, layers, vocab;
};
constexpr Shape k110M{768, 2048, 12, 32000};
constexpr Shape k260K{64, 172, 5, 512};

// Every matrix of one token, in the order a forward pass uses them.
struct ModelWeights {
  std::vector<std::shared_ptr<std::uint8_t>> storage;  // the loaders' allocator (huge pages asked for)
  std::vector<MatrixView> mats;
  std::size_t bytes = 0;
};

ModelWeights make_weights(const Shape& s, DType dt) {
  ModelWeights m;
  auto add = [&](std::int64_t rows, std::int64_t cols) {
    const std::size_t bytes = row_bytes(dt, cols) * std::size_t(rows);
    auto buf = detail::aligned_buffer(bytes);
    // Small finite values in every dtype: a repeating pattern of +-0.01..0.1.
    if (dt == DType::F32) {
      auto* f = reinterpret_cast<float*>(buf.get());
      for (std::size_t i = 0; i < bytes / 4; ++i) f[i] = float(int(i % 19) - 9) * 0.01f;
    } else {
      auto* h = reinterpret_cast<std::uint16_t*>(buf.get());
      for (std::size_t i = 0; i < bytes / 2; ++i) {
        const float v = float(int(i % 19) - 9) * 0.01f;
        h[i] = dt == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
      }
    }
    m.mats.push_back(MatrixView{dt, buf.get(), rows, cols});
    m.bytes += bytes;
    m.storage.push_back(std::move(buf));
  };
  for (int l = 0; l < s.layers; ++l) {
    for (int q = 0; q < 4; ++q) add(s.dim, s.dim);  // wq wk wv wo
    add(s.hidden, s.dim);                           // w1
    add(s.hidden, s.dim);                           // w3
    add(s.dim, s.hidden);                           // w2
  }
  add(s.vocab, s.dim);  // classifier
  return m;
}

// One resident weight set at a time: the 110M set is 438 MB in f32.
const ModelWeights& weights(const Shape& s, DType dt) {
  static std::unique_ptr<ModelWeights> cached;
  static const Shape* cached_shape = nullptr;
  static DType cached_dtype = DType::F32;
  if (!cached || cached_shape != &s || cached_dtype != dt) {
    cached.reset();
    cached = std::make_unique<ModelWeights>(make_weights(s, dt));
    cached_shape = &s;
    cached_dtype = dt;
  }
  return *cached;
}

const DType kTypes[] = {DType::F32, DType::BF16, DType::F16};

void BM_DecodeMatvec(benchmark::State& state) {
  const DType dt = kTypes[state.range(0)];
  const int threads = int(state.range(1));
  const ModelWeights& w = weights(k110M, dt);
  std::vector<float> x(std::size_t(k110M.hidden), 0.5f), y(std::size_t(k110M.vocab));
  std::int64_t rows = 0;
  for (const auto& m : w.mats) rows += m.rows;
  for (auto _ : state) {
    for (const auto& m : w.mats) cpu::matvec(m, x.data(), y.data(), threads);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(w.bytes));
  state.SetItemsProcessed(std::int64_t(state.iterations()));
  state.counters["rows_per_second"] =
      benchmark::Counter(double(rows) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::string(dtype_name(dt)) + " " + cpu::float_kernel_isa());
}
BENCHMARK(BM_DecodeMatvec)
    ->ArgsProduct({{0, 1, 2}, {1, 2}})
    ->ArgNames({"dtype", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The matrix products of one verify pass over n rows (issue 15): every matrix
// of the 110M shape through cpu::matmul with n activation rows (n = 1 is
// matvec, decode). cost(n)/cost(1) is the kernels' share of the forward-pass
// cost ratio bench_speculative's BM_Forward110M measures. CPU time (the
// default here): on a shared machine a descheduled slice would otherwise read
// as a slow pass; with 1 thread it is the whole pass's.
void BM_PassMatmul(benchmark::State& state) {
  const DType dt = kTypes[state.range(0)];
  const std::int64_t n = state.range(1);
  const int threads = int(state.range(2));
  const ModelWeights& w = weights(k110M, dt);
  std::vector<float> x(std::size_t(n * k110M.hidden), 0.5f), y(std::size_t(n * k110M.vocab));
  for (auto _ : state) {
    for (const auto& m : w.mats) cpu::matmul(m, x.data(), n, y.data(), threads);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(w.bytes));
  state.SetItemsProcessed(std::int64_t(state.iterations()) * n);
  state.SetLabel(std::string(dtype_name(dt)) + " " + cpu::float_kernel_isa());
}
BENCHMARK(BM_PassMatmul)
    ->ArgsProduct({{0, 1}, {1, 2, 4, 8, 16, 32}, {1, 2}})
    ->ArgNames({"dtype", "n", "threads"})
    ->Unit(benchmark::kMillisecond);

// A rows x cols weight matrix of `dt` whose values are finite in every dtype.
struct FilledMatrix {
  std::vector<std::uint8_t> bytes;
  MatrixView view;
  FilledMatrix(DType dt, std::int64_t rows, std::int64_t cols) : bytes(row_bytes(dt, cols) * std::size_t(rows), 0) {
    auto* h = reinterpret_cast<std::uint16_t*>(bytes.data());
    for (std::size_t i = 0; i < bytes.size() / 2; ++i) h[i] = std::uint16_t(0x3c00 + (i % 7));
    view = MatrixView{dt, bytes.data(), rows, cols};
  }
};

void BM_Matmul(benchmark::State& state) {
  const DType dt = kTypes[state.range(0)];
  const std::int64_t rows = state.range(1), cols = state.range(2), n = state.range(3);
  const int threads = int(state.range(4));
  const FilledMatrix filled(dt, rows, cols);
  const MatrixView& w = filled.view;
  std::vector<float> x(std::size_t(n * cols), 0.25f), y(std::size_t(n * rows));
  for (auto _ : state) {
    cpu::matmul(w, x.data(), n, y.data(), threads);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(2.0 * double(rows * cols * n) * double(state.iterations()),
                                               benchmark::Counter::kIsRate);
  state.SetItemsProcessed(std::int64_t(state.iterations()) * n);
  state.SetLabel(std::string(dtype_name(dt)));
}
BENCHMARK(BM_Matmul)
    ->ArgsProduct({{0, 1, 2}, {768, 2048}, {768}, {512}, {1, 2}})
    ->ArgsProduct({{0}, {768}, {2048}, {512}, {1, 2}})
    ->ArgsProduct({{0, 1}, {2048}, {768}, {4, 16, 32}, {1, 2}})
    ->ArgNames({"dtype", "rows", "cols", "n", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The FMA peak of one core at the width of the level the packed GEMM runs
// at, in CPU time (best of 5 runs of ~50 ms), measured once per level: on a
// shared machine wall time would count the moments another process had the
// core.
double level_peak_gflops() {
  static std::map<int, double> peaks;
  const cpu::CpuLevel level = cpu::cpu_level();
  const std::string name = level >= cpu::CpuLevel::avx512 ? "avx512" : level == cpu::CpuLevel::avx2 ? "avx2" : "sse2";
  auto [it, fresh] = peaks.try_emplace(int(level), 0.0);
  if (!fresh) return it->second;
  float sink = 0.0f;
  const auto iters = std::int64_t(12.5e9 / bench::fma_flops(name, 1));  // 12.5 GFLOP: ~50 ms at 250 GFLOP/s
  for (int r = 0; r < 5; ++r) {
    const std::clock_t c0 = std::clock();
    bench::fma_run_gflops(name, 1, iters, &sink);
    const double seconds = double(std::clock() - c0) / CLOCKS_PER_SEC;
    if (seconds > 0) it->second = std::max(it->second, bench::fma_flops(name, iters) / seconds * 1e-9);
  }
  benchmark::DoNotOptimize(sink);
  return it->second;
}

void BM_Prefill(benchmark::State& state) {
  const bool eigen = state.range(0) == 1;
#if !FASTINFER_BENCH_WITH_EIGEN
  if (eigen) {
    state.SkipWithError("built without Eigen: no baseline to measure");
    return;
  }
#endif
  const DType dt = state.range(1) == 0 ? DType::F32 : DType::BF16;
  const std::int64_t rows = state.range(2), cols = state.range(3), n = state.range(4);
  const int threads = int(state.range(5));
  const FilledMatrix filled(dt, rows, cols);
  const MatrixView& w = filled.view;
  std::vector<float> x(std::size_t(n * cols), 0.25f), y(std::size_t(n * rows));
  const double peak = level_peak_gflops();
  for (auto _ : state) {
#if FASTINFER_BENCH_WITH_EIGEN
    if (eigen)
      bench::eigen_matmul(w, x.data(), n, y.data(), threads);
    else
#endif
      cpu::matmul(w, x.data(), n, y.data(), threads);
    benchmark::ClobberMemory();
  }
  const double flop = 2.0 * double(rows * cols * n);
  state.counters["FLOPS"] = benchmark::Counter(flop * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["peak_frac"] = benchmark::Counter(flop * double(state.iterations()) * 1e-9 / (peak > 0 ? peak : 1),
                                                   benchmark::Counter::kIsRate);
  state.SetLabel(std::string(eigen ? "eigen " : "ours ") + std::string(dtype_name(dt)) + " " +
                 cpu::float_kernel_isa());
}
BENCHMARK(BM_Prefill)
    ->ArgsProduct({{0, 1}, {0, 1}, {768}, {768}, {64, 512}, {1, 2}})
    ->ArgsProduct({{0, 1}, {0, 1}, {2048}, {768}, {64, 512}, {1, 2}})
    ->ArgsProduct({{0, 1}, {0, 1}, {768}, {2048}, {64, 512}, {1, 2}})
    ->ArgsProduct({{0, 1}, {0, 1}, {32000}, {768}, {64, 512}, {1, 2}})
    ->ArgNames({"eigen", "bf16", "rows", "cols", "n", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->MeasureProcessCPUTime();

// 256-bit FMA chains (fma_peak.hpp's avx2 level, the width the matmul
// kernels use on an AVX2 build; bench_fma has every level).
void BM_FmaPeak(benchmark::State& state) {
  const int threads = int(state.range(0));
  constexpr std::int64_t kIterations = 1000000;
  float sink = 0.0f;
  if (bench::fma_run_gflops("avx2", 1, 16, &sink) <= 0) {
    state.SkipWithError("skipped: this CPU has no AVX2 with FMA");
    for (auto _ : state) {
    }
    return;
  }
  for (auto _ : state) {
    bench::fma_run_gflops("avx2", threads, kIterations, &sink);
    benchmark::DoNotOptimize(sink);
  }
  state.counters["FLOPS"] = benchmark::Counter(
      double(threads) * bench::fma_flops("avx2", kIterations) * double(state.iterations()), benchmark::Counter::kIsRate);
}
// CPU time, not wall time: on a shared machine a descheduled burst would
// otherwise read as a slow FMA unit (FLOPS = threads x per-core rate).
BENCHMARK(BM_FmaPeak)->Arg(1)->Arg(2)->ArgName("threads")->Unit(benchmark::kMillisecond);

void BM_SmallDecode(benchmark::State& state) {
  const int threads = int(state.range(0));
  const ModelWeights& w = weights(k260K, DType::F32);
  const Shape& s = k260K;
  std::vector<float> x(std::size_t(s.dim), 0.1f), xb(std::size_t(s.dim)), norm(std::size_t(s.dim), 1.0f);
  std::vector<float> q(std::size_t(s.dim)), h1(std::size_t(s.hidden)), h3(std::size_t(s.hidden));
  std::vector<float> logits(std::size_t(s.vocab));
  int pos = 0;
  for (auto _ : state) {
    std::size_t m = 0;
    for (int l = 0; l < s.layers; ++l) {
      cpu::rmsnorm(xb.data(), x.data(), norm.data(), s.dim, 1e-5f);
      for (int j = 0; j < 3; ++j) cpu::matvec(w.mats[m++], xb.data(), q.data(), threads);
      cpu::rope(q.data(), 8, 8, pos, 10000.0f, RopeStyle::Interleaved);
      cpu::matvec(w.mats[m++], q.data(), xb.data(), threads);
      cpu::add(x.data(), xb.data(), s.dim);
      cpu::rmsnorm(xb.data(), x.data(), norm.data(), s.dim, 1e-5f);
      cpu::matvec(w.mats[m++], xb.data(), h1.data(), threads);
      cpu::matvec(w.mats[m++], xb.data(), h3.data(), threads);
      cpu::swiglu(h1.data(), h3.data(), s.hidden);
      cpu::matvec(w.mats[m++], h1.data(), xb.data(), threads);
      cpu::add(x.data(), xb.data(), s.dim);
    }
    cpu::rmsnorm(xb.data(), x.data(), norm.data(), s.dim, 1e-5f);
    cpu::matvec(w.mats[m], xb.data(), logits.data(), threads);
    benchmark::DoNotOptimize(cpu::argmax(logits.data(), s.vocab));
    pos = (pos + 1) % 256;
  }
  state.SetItemsProcessed(std::int64_t(state.iterations()));
}
BENCHMARK(BM_SmallDecode)->Arg(1)->Arg(2)->ArgName("threads")->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

FASTINFER_BENCHMARK_MAIN()
