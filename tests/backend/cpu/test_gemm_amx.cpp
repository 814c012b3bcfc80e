// The AMX bf16 tiles (gemm_amx.hpp, level amx with bf16 activations):
// * every output within the rounding bound of the exact sum over the same
//   bf16 weights and rounded activations (cpu::reference::matmul), over
//   shapes that cut tiles, steps and panels anywhere;
// * batch invariance: a token's outputs have the same bits at any pass size
//   (1 = decode .. 300 = prefill), thread count and row range;
// * the activation panels' layout, written out by hand;
// * cpu::matvec / cpu::matmul take the tiles exactly at level amx in the bf16
//   mode; in the widen mode level amx computes avx512's bits;
// * edges: a NaN or infinity stays in its token; a matrix with no columns
//   gives zeros (bf16 and Q8_0 tiles).
// Each case skips with a message on a CPU (or OS) without AMX.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "fastinfer/backend/cpu/bf16_dot.hpp"
#include "fastinfer/backend/cpu/gemm.hpp"
#include "fastinfer/backend/cpu/gemm_amx.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using fastinfer::testing::check_close;
using fastinfer::testing::random_floats;
using fastinfer::testing::random_matrix;

namespace {

#define FASTINFER_REQUIRE_AMX() \
  FASTINFER_REQUIRE_CPU(cpu::detected_cpu_level() >= cpu::CpuLevel::amx, "the AMX level")

// The activations as the kernels see them: rounded to bf16, back to f32.
std::vector<float> rounded_floats(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = bf16_to_f32(cpu::scalar::round_activation_bf16(x[i]));
  return out;
}

bool same_bits(const float* a, const float* b, std::size_t count) {
  return std::memcmp(a, b, count * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE(
    "AMX activation panels hold 16 tokens of rounded column pairs, zeros past the tokens and the columns") {
  FASTINFER_REQUIRE_AMX();
#if FASTINFER_CPU_AVX512_TILES
  std::uint32_t seed = 46000;
  for (std::int64_t cols : {1, 2, 15, 16, 17, 31, 32, 33, 70})
    for (std::int64_t n : {1, 15, 16, 17, 40}) {
      auto x = random_floats(std::size_t(n * cols), seed++);
      x[0] = 1e-40f;  // a denormal: to zero, as vcvtneps2bf16 does
      const std::int64_t depth = (cols + 31) / 32 * 32;
      REQUIRE(cpu::amx_bf16::panel_elements(cols) == depth * 16);
      for (std::int64_t p = 0; p < cpu::amx_bf16::panels_of(n); ++p) {
        std::vector<std::uint16_t> panel(std::size_t(depth * 16), 0xffff);
        cpu::amx_bf16::pack_panel(x.data(), n, cols, p, panel.data());
        for (std::int64_t c = 0; c < depth; ++c)
          for (std::int64_t t = 0; t < 16; ++t) {
            const std::int64_t token = 16 * p + t;
            const std::uint16_t want =
                token < n && c < cols ? cpu::scalar::round_activation_bf16(x[std::size_t(token * cols + c)])
                                      : 0;
            INFO("cols " << cols << " n " << n << " panel " << p << " column " << c << " token " << t);
            REQUIRE(panel[std::size_t((c / 2) * 32 + 2 * t + c % 2)] == want);
          }
      }
    }
#endif
}

TEST_CASE(
    "AMX bf16 tiles: within the bound of exact sums, and a token's bits alike at any pass size, thread "
    "count and row range") {
  FASTINFER_REQUIRE_AMX();
#if FASTINFER_CPU_AVX512_TILES
  cpu::CpuLevelScope level(cpu::CpuLevel::amx);
  std::uint32_t seed = 47000;
  for (std::int64_t rows : {1, 15, 16, 17, 31, 32, 33, 100, 172})
    for (std::int64_t cols : {1, 2, 31, 32, 33, 64, 100, 259, 768}) {
      const auto w = random_matrix(DType::BF16, rows, cols, seed++);
      const std::int64_t nmax = 40;
      const auto x = random_floats(std::size_t(nmax * cols), seed++);
      const auto xr = rounded_floats(x);
      // Each token alone (decode): the bits every pass must reproduce.
      std::vector<float> alone(std::size_t(nmax * rows), NAN);
      for (std::int64_t t = 0; t < nmax; ++t)
        cpu::amx_bf16_matmul(w.view, x.data() + t * cols, 1, alone.data() + t * rows, 1);
      std::vector<float> ref(alone.size());
      cpu::reference::matmul(w.view, xr.data(), nmax, ref.data());
      INFO(rows << "x" << cols);
      check_close(w.view, xr.data(), nmax, alone, ref);
      for (std::int64_t n : {2, 5, 15, 16, 17, 31, 32, 33, 40})
        for (int threads : {1, 2}) {
          std::vector<float> y(std::size_t(n * rows), NAN);
          cpu::amx_bf16_matmul(w.view, x.data(), n, y.data(), threads);
          INFO("n " << n << " threads " << threads);
          REQUIRE(same_bits(y.data(), alone.data(), y.size()));
        }
    }
  // A prefill-sized pass: 300 tokens (19 panels, the last one partial).
  const auto w = random_matrix(DType::BF16, 200, 300, seed++);
  const std::int64_t n = 300;
  const auto x = random_floats(std::size_t(n * 300), seed++);
  std::vector<float> y(std::size_t(n * 200)), one(200);
  cpu::amx_bf16_matmul(w.view, x.data(), n, y.data(), 2);
  for (std::int64_t t : {0, 17, 150, 299}) {
    cpu::amx_bf16_matmul(w.view, x.data() + t * 300, 1, one.data(), 1);
    INFO("token " << t);
    REQUIRE(same_bits(one.data(), y.data() + t * 200, 200));
  }
#endif
}

TEST_CASE("AMX tiles: a matrix with no columns gives zeros, bf16 and Q8_0, decode and a pass") {
  FASTINFER_REQUIRE_AMX();
  cpu::CpuLevelScope level(cpu::CpuLevel::amx);
  cpu::Bf16DotScope mode(cpu::Bf16Dot::bf16);
  const std::vector<std::uint8_t> none(64);
  std::vector<float> x(1, 1.0f);
  for (DType dt : {DType::BF16, DType::Q8_0})
    for (std::int64_t n : {1, 3, 40}) {
      std::vector<float> y(std::size_t(n * 37), -1.0f);
      cpu::matmul(MatrixView{dt, none.data(), 37, 0}, x.data(), n, y.data(), 2);
      INFO(dtype_name(dt) << " n " << n);
      for (float v : y) REQUIRE(v == 0.0f);
    }
}

TEST_CASE("AMX bf16 tiles: a NaN or infinite activation reaches only its own token's outputs") {
  FASTINFER_REQUIRE_AMX();
#if FASTINFER_CPU_AVX512_TILES
  const auto w = random_matrix(DType::BF16, 48, 64, 48000);
  auto x = random_floats(std::size_t(20 * 64), 48001);
  x[3 * 64 + 10] = NAN;
  x[7 * 64 + 5] = INFINITY;
  std::vector<float> y(std::size_t(20 * 48));
  cpu::amx_bf16_matmul(w.view, x.data(), 20, y.data(), 2);
  for (std::int64_t t = 0; t < 20; ++t)
    for (std::int64_t r = 0; r < 48; ++r) {
      const float v = y[std::size_t(t * 48 + r)];
      INFO("token " << t << " row " << r);
      if (t == 3)
        CHECK(std::isnan(v));
      else if (t == 7)
        CHECK(!std::isfinite(v));  // +-inf times a non-zero weight (NaN had it met a zero)
      else
        CHECK(std::isfinite(v));
    }
#endif
}

TEST_CASE("cpu::matvec and cpu::matmul take the AMX tiles at level amx in the bf16 mode only") {
  FASTINFER_REQUIRE_AMX();
#if FASTINFER_CPU_AVX512_TILES
  std::uint32_t seed = 49000;
  for (DType dt : testing::kFloatTypes)
    for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{37, 100}, {64, 259}}) {
      const auto w = random_matrix(dt, rows, cols, seed++);
      const std::int64_t nmax = 40;
      const auto x = random_floats(std::size_t(nmax * cols), seed++);
      // What each (level, mode) computes for the pass of nmax rows, and for each row alone.
      auto run = [&](cpu::CpuLevel l, cpu::Bf16Dot m) {
        cpu::CpuLevelScope level(l);
        cpu::Bf16DotScope mode(m);
        std::vector<float> pass(std::size_t(nmax * rows)), alone(pass.size());
        cpu::matmul(w.view, x.data(), nmax, pass.data(), 2);
        for (std::int64_t t = 0; t < nmax; ++t)
          cpu::matvec(w.view, x.data() + t * cols, alone.data() + t * rows, 2);
        return std::make_pair(pass, alone);
      };
      const auto amx_widen = run(cpu::CpuLevel::amx, cpu::Bf16Dot::widen);
      const auto avx512_widen = run(cpu::CpuLevel::avx512, cpu::Bf16Dot::widen);
      const auto amx_pairs = run(cpu::CpuLevel::amx, cpu::Bf16Dot::bf16);
      const auto avx512_pairs = run(cpu::CpuLevel::avx512, cpu::Bf16Dot::bf16);
      INFO(dtype_name(dt) << " " << rows << "x" << cols);
      REQUIRE(amx_widen == avx512_widen);  // widen mode: level amx is avx512
      if (dt != DType::BF16) {
        REQUIRE(amx_pairs == amx_widen);  // the mode is for bf16 weights only
        continue;
      }
      std::vector<float> tiles(std::size_t(nmax * rows));
      cpu::amx_bf16_matmul(w.view, x.data(), nmax, tiles.data(), 1);
      REQUIRE(
          same_bits(amx_pairs.first.data(), tiles.data(), tiles.size()));  // a 40-row pass (prefill's path)
      REQUIRE(same_bits(amx_pairs.second.data(), tiles.data(), tiles.size()));   // decode
      CHECK(!same_bits(avx512_pairs.first.data(), tiles.data(), tiles.size()));  // avx512 has its own order
    }
#endif
}
