#include <cstdio>

#include <fastinfer/fastinfer.hpp>

int main() {
  // Use something from every layer so that a broken install fails to link.
  const float x[4] = {1.0f, -2.0f, 3.0f, 0.5f};
  const float w[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  float y[4];
  fastinfer::cpu::rmsnorm(y, x, w, 4, 1e-5f);
  const auto best = fastinfer::cpu::argmax(y, 4);
  // The packaging tests read "openmp on|off" to check that the package's
  // OpenMP option reached the consumer's compile flags.
#if defined(_OPENMP)
  const char* openmp = "on";
#else
  const char* openmp = "off";
#endif
  std::printf("fastinfer %s: argmax %lld, openmp %s\n", fastinfer::kVersionString, static_cast<long long>(best),
              openmp);
  return best == 2 ? 0 : 1;
}
