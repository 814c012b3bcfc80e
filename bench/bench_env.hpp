// Benchmark sizes and settings from the environment (bench_engine's
// FASTINFER_ENGINE_*, bench_eagle's FASTINFER_ENGINE_EAGLE_RUNS): unset or
// empty gives the fallback.
#pragma once

#include <cstdlib>
#include <string>

namespace fastinfer::bench {

inline std::string env_str(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

}  // namespace fastinfer::bench
