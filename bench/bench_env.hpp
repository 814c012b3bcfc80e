// Benchmark sizes and settings from the environment (bench_engine's
// FASTINFER_ENGINE_*, bench_eagle's FASTINFER_ENGINE_EAGLE_RUNS): unset or
// empty gives the fallback. And the settings that change what a run measures,
// recorded in its output (FASTINFER_BENCHMARK_MAIN).
#pragma once

#include <benchmark/benchmark.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/one_row_walk.hpp"

namespace fastinfer::bench {

inline std::string env_str(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

// Puts the CPU level the kernels run at, the kernel modes (bf16 dot, one-row
// walk) and OpenMP's settings into the run's
// context (the console header; "context" in --benchmark_format=json), and
// warns on OMP_WAIT_POLICY=passive: a sleeping OpenMP team wakes for each of
// a forward pass's ~85 matrix products (Intel Xeon, 2 threads: the 110M bf16
// one-row pass 12.0 ms passive, 4.7 ms without; Q8_0 decode 10.5 against
// 3.8). The test command sets it so that two test programs can share two
// cores; a benchmark should not.
inline void record_run_settings() {
  benchmark::AddCustomContext("fastinfer_cpu_level", cpu::cpu_level_name(cpu::cpu_level()));
  benchmark::AddCustomContext("fastinfer_bf16_dot", cpu::bf16_dot_running());
  benchmark::AddCustomContext("fastinfer_one_row_walk", cpu::one_row_walk_name(cpu::one_row_walk()));
  std::string policy = env_str("OMP_WAIT_POLICY", "unset");
  benchmark::AddCustomContext("omp_wait_policy", policy);
  benchmark::AddCustomContext("omp_num_threads", env_str("OMP_NUM_THREADS", "unset"));
  for (char& c : policy) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (policy == "passive")
    std::fprintf(stderr,
                 "warning: OMP_WAIT_POLICY=passive: every parallel region wakes a sleeping team; "
                 "multi-threaded figures will be slower than an engine's (unset it to benchmark)\n");
}

}  // namespace fastinfer::bench

// BENCHMARK_MAIN with the run's settings recorded (record_run_settings).
#define FASTINFER_BENCHMARK_MAIN()                                      \
  int main(int argc, char** argv) {                                     \
    ::benchmark::Initialize(&argc, argv);                               \
    if (::benchmark::ReportUnrecognizedArguments(argc, argv)) return 1; \
    ::fastinfer::bench::record_run_settings();                          \
    ::benchmark::RunSpecifiedBenchmarks();                              \
    ::benchmark::Shutdown();                                            \
    return 0;                                                           \
  }
