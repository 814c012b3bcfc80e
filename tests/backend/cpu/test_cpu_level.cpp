// The run-time CPU level (cpu_level.hpp): which features make a level, the
// errors of FASTINFER_CPU_LEVEL and set_cpu_level, and that a program built
// without AVX-512 flags runs the AVX-512 tiles on a CPU that has them (this
// file is also compiled into backend_cpu_dispatch_v3, built for x86-64-v3,
// with the kernel tests: tests/CMakeLists.txt).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/cpu_level.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/q8_0.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using cpu::CpuLevel;
using Catch::Matchers::Contains;

namespace {

cpu::CpuFeatures avx2_machine() {
  cpu::CpuFeatures f;
  f.avx = f.avx2 = f.fma = f.f16c = f.os_avx = true;
  return f;
}
cpu::CpuFeatures avx512_machine() {
  cpu::CpuFeatures f = avx2_machine();
  f.avx512f = f.avx512cd = f.avx512bw = f.avx512dq = f.avx512vl = f.os_avx512 = true;
  return f;
}

}  // namespace

TEST_CASE("a CPU level needs every feature of its set and the OS's register state") {
  if (!FASTINFER_CPU_DISPATCH) {
    CHECK(cpu::cpu_level_of(avx512_machine()) == CpuLevel::scalar);  // no per-ISA kernels compiled
    return;
  }
  CHECK(cpu::cpu_level_of(cpu::CpuFeatures{}) == CpuLevel::scalar);
  CHECK(cpu::cpu_level_of(avx2_machine()) == CpuLevel::avx2);
  CHECK(cpu::cpu_level_of(avx512_machine()) == CpuLevel::avx512);
  cpu::CpuFeatures f = avx2_machine();
  f.f16c = false;  // AVX2 + FMA without F16C (no such CPU ships, but the f16 tiles need it)
  CHECK(cpu::cpu_level_of(f) == CpuLevel::scalar);
  f = avx2_machine();
  f.os_avx = false;  // an OS that does not save the YMM state
  CHECK(cpu::cpu_level_of(f) == CpuLevel::scalar);
  f = avx512_machine();
  f.os_avx512 = false;  // AVX-512 hardware, ZMM state not enabled by the OS
  CHECK(cpu::cpu_level_of(f) == CpuLevel::avx2);
  f = avx512_machine();
  f.avx512bw = false;  // Knights Landing: F and CD only
  CHECK(cpu::cpu_level_of(f) == CpuLevel::avx2);
  f = avx512_machine();
  f.amx_tile = f.amx_bf16 = f.amx_int8 = f.os_amx = f.avx512bf16 = true;
  CHECK(cpu::cpu_level_of(f) == CpuLevel::amx);
  f.os_amx = false;  // the OS keeps the tile state off (or refused the process's permission)
  CHECK(cpu::cpu_level_of(f) == CpuLevel::avx512);
  f.os_amx = true;
  f.amx_bf16 = false;  // int8 tiles only: the amx level's kernels are bf16
  CHECK(cpu::cpu_level_of(f) == CpuLevel::avx512);
  f.amx_bf16 = true;
  f.avx512bf16 = false;  // the activations round with vcvtneps2bf16
  CHECK(cpu::cpu_level_of(f) == CpuLevel::avx512);
  f.avx512bf16 = true;
  f.os_avx512 = false;  // amx sits on avx512
  CHECK(cpu::cpu_level_of(f) == CpuLevel::avx2);
}

TEST_CASE("parse_cpu_level reads every level name and names a bad value with the choices") {
  for (CpuLevel l : {CpuLevel::scalar, CpuLevel::avx2, CpuLevel::avx512, CpuLevel::amx})
    CHECK(cpu::parse_cpu_level(cpu::cpu_level_name(l), "test") == l);
  CHECK_THROWS_MATCHES(
      cpu::parse_cpu_level("avx3", "FASTINFER_CPU_LEVEL"), InvalidArgument,
      Catch::Matchers::Message(
          "FASTINFER_CPU_LEVEL=avx3: unknown CPU level (choose scalar, avx2, avx512 or amx)"));
  CHECK_THROWS_AS(cpu::parse_cpu_level("AVX2", "FASTINFER_CPU_LEVEL"), InvalidArgument);
}

TEST_CASE("set_cpu_level refuses a level above the CPU's and a non-level, leaving the level as it was") {
  const CpuLevel before = cpu::cpu_level();
  CHECK_THROWS_WITH(cpu::set_cpu_level(CpuLevel(7)), Contains("7 is not a CPU level"));
  for (CpuLevel l : {CpuLevel::avx2, CpuLevel::avx512, CpuLevel::amx})
    if (cpu::detected_cpu_level() < l) {
      CHECK_THROWS_WITH(cpu::set_cpu_level(l), Contains(std::string("this CPU supports up to ") +
                                                        cpu::cpu_level_name(cpu::detected_cpu_level())));
    }
  CHECK(cpu::cpu_level() == before);
  {
    cpu::CpuLevelScope scope(CpuLevel::scalar);
    CHECK(cpu::cpu_level() == CpuLevel::scalar);
    CHECK(cpu::q8_0::kernel_isa() == std::string("scalar"));
  }
  CHECK(cpu::cpu_level() == before);
}

TEST_CASE("the current CPU level is the detected one lowered by FASTINFER_CPU_LEVEL and a bad value throws naming it") {
  const char* env = std::getenv("FASTINFER_CPU_LEVEL");
  const std::string value = env != nullptr ? env : "";
  const bool known = value == "scalar" || value == "avx2" || value == "avx512";
  if (!value.empty() && !known) {
    // Every read throws, so no kernel runs at a level nobody chose.
    const std::string want =
        "FASTINFER_CPU_LEVEL=" + value + ": unknown CPU level (choose scalar, avx2, avx512 or amx)";
    CHECK_THROWS_MATCHES(cpu::cpu_level(), InvalidArgument, Catch::Matchers::Message(want));
    CHECK_THROWS_MATCHES(cpu::cpu_level(), InvalidArgument, Catch::Matchers::Message(want));
    WARN("FASTINFER_CPU_LEVEL=" << value << " refused");
    return;
  }
  CpuLevel want = cpu::detected_cpu_level();
  if (known) want = std::min(want, cpu::parse_cpu_level(value, "FASTINFER_CPU_LEVEL"));
  CHECK(cpu::cpu_level() == want);
  WARN("cpu level " << cpu::cpu_level_name(cpu::cpu_level()) << " (detected "
                    << cpu::cpu_level_name(cpu::detected_cpu_level()) << ", FASTINFER_CPU_LEVEL='" << value
                    << "'; features: " << cpu::cpu_features_summary() << ")");
}

TEST_CASE("a build without AVX-512 flags runs the AVX-512 tiles on a CPU that has them") {
#if defined(__AVX512F__)
  WARN("this build enables AVX-512 itself: backend_cpu_dispatch_v3 (x86-64-v3) is the proof");
#endif
  if (cpu::detected_cpu_level() < CpuLevel::avx512) {
    WARN("this CPU lacks AVX-512 (" << cpu::cpu_features_summary() << "): nothing to prove here");
    return;
  }
  cpu::CpuLevelScope scope(CpuLevel::avx512);
  CHECK(cpu::float_kernel_isa() == std::string("avx512"));
  if (cpu::cpu_features().avx512vnni) CHECK(cpu::q8_0::kernel_isa() == std::string("avx512-vnni"));
  // The 16-lane order's bits, which no 8-lane or scalar kernel gives here.
  const std::int64_t rows = 21, cols = 67;
  auto w = testing::random_matrix(DType::BF16, rows, cols, 77);
  const auto x = testing::random_floats(std::size_t(cols), 78);
  std::vector<float> y(static_cast<std::size_t>(rows));
  cpu::matvec(w.view, x.data(), y.data(), 1);
  bool differs_from_8_lanes = false;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float want = testing::ordered_dot<16>(w.view, r, x.data());
    const float eight = testing::ordered_dot<8>(w.view, r, x.data());
    CHECK(std::memcmp(&want, &y[std::size_t(r)], sizeof(float)) == 0);
    differs_from_8_lanes = differs_from_8_lanes || std::memcmp(&want, &eight, sizeof(float)) != 0;
  }
  CHECK(differs_from_8_lanes);  // else this matrix could not tell the levels apart
  WARN("built " << (cpu::kLanes == 16 ? "with" : "without") << " AVX-512 flags (xsimd " << cpu::isa_name()
                << "): float kernels " << cpu::float_kernel_isa() << ", Q8_0 kernels " << cpu::q8_0::kernel_isa());
}

TEST_CASE("level amx names its kernels: AVX-512 float tiles, AMX-INT8 for Q8_0") {
  if (cpu::detected_cpu_level() < CpuLevel::amx) {
    WARN("no amx level on this CPU (" << cpu::cpu_features_summary() << "): nothing to prove here");
    return;
  }
  cpu::CpuLevelScope scope(CpuLevel::amx);
  CHECK(cpu::float_kernel_isa() ==
        std::string("avx512"));  // widen mode: avx512's tiles (bf16 mode: gemm_amx.hpp)
  if (cpu::cpu_features().amx_int8) CHECK(cpu::q8_0::kernel_isa() == std::string("amx-int8"));
}
