// FMA peak per ISA level: the compute ceiling of the roofline, as the
// bandwidth one (read_bandwidth.hpp) is the memory ceiling. Each level runs
// 12 independent multiply-add chains in registers (enough to cover a 4-cycle
// FMA latency on two FMA pipes) with no memory traffic at all, so the figure
// is what the core can retire, not what any kernel reaches.
//
// The levels are compiled with __attribute__((target)) regions, not with the
// build's -march, so one binary measures every level the CPU has (the
// simdjson way): sse2 (4 floats, separate multiply and add: no FMA), avx2
// (fma3, 8 floats), avx512 (16 floats). x86-64 only; elsewhere there is no
// level and fma_peak_gflops returns 0.
// Shared by bench_fma and fastinfer-generate --profile.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/cpu_target.hpp"  // FASTINFER_CPU_INTRINSIC_WARNINGS_OFF

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTINFER_BENCH_X86 1
#include <immintrin.h>
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastinfer::bench {

#if defined(FASTINFER_BENCH_X86)
// GCC 12's own AVX-512 intrinsics (set1, reductions) start from
// _mm512_undefined_ps and trip -W(maybe-)uninitialized inside target regions
// (cpu_target.hpp).
FASTINFER_CPU_INTRINSIC_WARNINGS_OFF
namespace detail {

// Each kernel: `iters` rounds of 12 chains; returns a value that depends on
// every chain (stored by the caller so nothing is optimised away).
__attribute__((target("sse2"))) inline float fma_chains_sse2(std::int64_t iters, float seed) {
  __m128 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm_set1_ps(seed + float(i));
  const __m128 m = _mm_set1_ps(0.999999f), c = _mm_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm_add_ps(_mm_mul_ps(a[i], m), c);
  __m128 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm_add_ps(s, a[i]);
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline float fma_chains_avx2(std::int64_t iters, float seed) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(seed + float(i));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) inline float fma_chains_avx512(std::int64_t iters, float seed) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(seed + float(i));
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  // Every chain feeds the result: summing only a[0] and a[11] let GCC drop
  // the other ten chains, and the level read 6x its real peak.
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

}  // namespace detail
FASTINFER_CPU_INTRINSIC_WARNINGS_ON
#endif

// The levels this CPU runs, lowest first ("sse2", "avx2", "avx512").
inline std::vector<std::string> fma_levels() {
  std::vector<std::string> levels;
#if defined(FASTINFER_BENCH_X86)
  levels.push_back("sse2");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) levels.push_back("avx2");
  if (__builtin_cpu_supports("avx512f")) levels.push_back("avx512");
#endif
  return levels;
}

// The level the library's kernels were compiled for (xsimd's default arch
// follows the same macros).
inline std::string compiled_fma_level() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "sse2";
#endif
}

// Floats per register of a level; 0 for an unknown one.
inline int fma_lanes(const std::string& level) {
  return level == "sse2" ? 4 : level == "avx2" ? 8 : level == "avx512" ? 16 : 0;
}

// FLOPs of `iters` rounds on one thread (a multiply and an add count 2,
// fused or not).
inline double fma_flops(const std::string& level, std::int64_t iters) {
  return 2.0 * 12.0 * double(fma_lanes(level)) * double(iters);
}

// One timed run of `iters` rounds on each of `threads` threads: GFLOP/s
// (0 for a level this CPU or build lacks). `*sink` receives the chains' sum.
inline double fma_run_gflops(const std::string& level, int threads, std::int64_t iters, float* sink) {
#if defined(FASTINFER_BENCH_X86)
  const bool ok = level == "sse2" || (level == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ||
                  (level == "avx512" && __builtin_cpu_supports("avx512f"));
  if (!ok) return 0.0;
  float total = 0.0f;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const float seed = 1.0f + 1e-3f * float(total);
    total += level == "avx512" ? detail::fma_chains_avx512(iters, seed)
             : level == "avx2" ? detail::fma_chains_avx2(iters, seed)
                               : detail::fma_chains_sse2(iters, seed);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  *sink = total;
  return fma_flops(level, iters) * double(threads) / s * 1e-9;
#else
  (void)level, (void)threads, (void)iters, (void)sink;
  return 0.0;
#endif
}

// Best of `repeats` runs of about `seconds_per_run` each: the peak.
inline double fma_peak_gflops(const std::string& level, int threads, double seconds_per_run = 0.05, int repeats = 5) {
  float sink = 0.0f;
  const double probe = fma_run_gflops(level, 1, 1 << 14, &sink);
  if (probe <= 0) return 0.0;
  const auto iters = std::int64_t(seconds_per_run * probe * 1e9 / fma_flops(level, 1)) + 1;
  double best = 0.0;
  for (int r = 0; r < repeats; ++r) best = std::max(best, fma_run_gflops(level, threads, iters, &sink));
  volatile float keep = sink;
  (void)keep;
  return best;
}

}  // namespace fastinfer::bench
