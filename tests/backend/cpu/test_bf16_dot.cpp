// The bf16-activation mode (bf16_dot.hpp, gemv_avx512_bf16.hpp):
// * the rounding of activations and every tile bit for bit against the
//   scalar model of vcvtneps2bf16 and vdpbf16ps (gemv_reference.hpp), for
//   1..32 rows in a pass and through matvec (batch invariance), and within
//   the rounding bound of an exact sum over the rounded activations;
// * cpu::matvec / cpu::matmul run those tiles only when asked, for bf16
//   weights, at avx512 (level amx has AMX tiles: test_gemm_amx); the mode's
//   switch and its errors;
// * a bf16 model in the mode: a token's logits alike decoded alone and in a
//   pass (what exact speculative decoding needs), and how far they move from
//   the widening kernels (KL, top-1 agreement: the numerics the mode costs).
// Each case skips with a message on a CPU without AVX512-BF16.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "fastinfer/backend/cpu/bf16_dot.hpp"
#include "fastinfer/backend/cpu/gemm.hpp"
#include "fastinfer/backend/cpu/gemv.hpp"
#include "fastinfer/backend/cpu/gemv_avx512_bf16.hpp"
#include "fastinfer/backend/cpu/gemv_reference.hpp"
#include "fastinfer/backend/cpu/reference.hpp"
#include "fastinfer/model/llama_model.hpp"
#include "fastinfer/model/load_model.hpp"
#include "fastinfer/model/logits_agreement.hpp"
#include "golden.hpp"
#include "shared_dir.hpp"
#include "test_kernels_support.hpp"

using namespace fastinfer;
using fastinfer::testing::check_close;
using fastinfer::testing::random_floats;
using fastinfer::testing::random_matrix;

namespace {

#define FASTINFER_REQUIRE_BF16_DOT() FASTINFER_REQUIRE_CPU(cpu::bf16_dot_supported(), "AVX512-BF16")

std::vector<std::uint16_t> rounded(const float* x, std::int64_t count) {
  std::vector<std::uint16_t> out(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) out[std::size_t(i)] = cpu::scalar::round_activation_bf16(x[i]);
  return out;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

}  // namespace

TEST_CASE("activations round as vcvtneps2bf16: nearest even, denormals to zero, NaN quiet") {
  // The scalar model on its own first: it is what the kernels are held to.
  CHECK(cpu::scalar::round_activation_bf16(1.0f) == 0x3f80);
  CHECK(cpu::scalar::round_activation_bf16(1.00390625f) == 0x3f80);  // a tie: to even
  CHECK(cpu::scalar::round_activation_bf16(1.01171875f) == 0x3f82);  // a tie: to even (up)
  CHECK(cpu::scalar::round_activation_bf16(1e-40f) == 0x0000);
  CHECK(cpu::scalar::round_activation_bf16(-1e-40f) == 0x8000);
  CHECK(cpu::scalar::round_activation_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds up to inf
  CHECK((cpu::scalar::round_activation_bf16(std::numeric_limits<float>::quiet_NaN()) & 0x7fc0) == 0x7fc0);
  FASTINFER_REQUIRE_BF16_DOT();
#if FASTINFER_CPU_AVX512_TILES
  std::vector<float> x = {0.0f,
                          -0.0f,
                          1e-40f,
                          -1e-40f,
                          1.17549435e-38f,
                          1.0f,
                          1.00390625f,
                          1.01171875f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN()};
  const auto more = random_floats(1000, 17, -1e4f, 1e4f);
  x.insert(x.end(), more.begin(), more.end());
  for (std::size_t count : {std::size_t(1), std::size_t(15), std::size_t(16), std::size_t(17), x.size()}) {
    std::vector<std::uint16_t> got(count + 1, 0xabcd);
    cpu::avx512_bf16::round_activations(x.data(), std::int64_t(count), got.data());
    const auto want = rounded(x.data(), std::int64_t(count));
    for (std::size_t i = 0; i < count; ++i) {
      INFO("x = " << x[i] << " (count " << count << ")");
      CHECK(got[i] == want[i]);
    }
    CHECK(got[count] == 0xabcd);  // nothing written past the end
  }
#endif
}

TEST_CASE(
    "bf16 pair tiles equal the scalar vdpbf16ps model bit for bit, a pass of up to 32 rows gives each its "
    "1-row bits") {
  FASTINFER_REQUIRE_BF16_DOT();
#if FASTINFER_CPU_AVX512_TILES
  std::uint32_t seed = 31000;
  for (std::int64_t nrows : {1, 5, 8, 13, 24, 25, 49, 100})
    for (std::int64_t cols : {1, 15, 16, 31, 32, 33, 64, 100, 259, 768}) {
      const auto w = random_matrix(DType::BF16, nrows, cols, seed++);
      const std::int64_t nmax = 32;
      const auto x = random_floats(std::size_t(nmax * cols), seed++);
      const auto xb = rounded(x.data(), nmax * cols);
      std::vector<float> alone(std::size_t(nmax * nrows), NAN);
      for (std::int64_t t = 0; t < nmax; ++t)
        cpu::avx512_bf16::matvec_rows(w.view, xb.data() + t * cols, alone.data() + t * nrows, 0, nrows);
      for (std::int64_t t = 0; t < nmax; ++t)
        for (std::int64_t r = 0; r < nrows; ++r) {
          const float want = cpu::scalar::bf16_pair_dot(
              reinterpret_cast<const std::uint16_t*>(w.view.row_ptr(r)), xb.data() + t * cols, cols);
          INFO(nrows << "x" << cols << " row " << r << " token " << t);
          REQUIRE(same_bits(alone[std::size_t(t * nrows + r)], want));
        }
      // The rounded activations as floats: an exact sum of the same products,
      // the bound of reference::matmul apart.
      std::vector<float> xr(xb.size());
      for (std::size_t i = 0; i < xb.size(); ++i) xr[i] = bf16_to_f32(xb[i]);
      for (std::int64_t n : {2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 31, 32}) {
        std::vector<float> y(std::size_t(n * nrows), NAN), ref(y.size(), NAN);
        cpu::avx512_bf16::matmul_rows(w.view, xb.data(), n, y.data(), 0, nrows);
        INFO(nrows << "x" << cols << " n " << n);
        REQUIRE(std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)) == 0);
        cpu::reference::matmul(w.view, xr.data(), n, ref.data());
        check_close(w.view, xr.data(), n, y, ref);
      }
      if (nrows >= 8) {  // a row range in the middle writes that range only
        std::vector<float> y(std::size_t(3 * nrows), -7.0f);
        cpu::avx512_bf16::matmul_rows(w.view, xb.data(), 3, y.data(), 5, nrows - 1);
        testing::require_row_range_written(y, alone, 3, nrows, 5, nrows - 1, -7.0f);
      }
    }
#endif
}

TEST_CASE("cpu::matvec and cpu::matmul take the bf16 tiles only when asked, for bf16 weights, at avx512") {
  std::uint32_t seed = 32000;
  // The mode's words, and its refusal where the CPU lacks the instructions.
  CHECK(cpu::parse_bf16_dot("bf16", "test") == cpu::Bf16Dot::bf16);
  CHECK(cpu::parse_bf16_dot("widen", "test") == cpu::Bf16Dot::widen);
  CHECK_THROWS_WITH(cpu::parse_bf16_dot("fast", "FASTINFER_BF16_DOT"),
                    Catch::Contains("FASTINFER_BF16_DOT=fast") && Catch::Contains("widen or bf16"));
  if (!cpu::bf16_dot_supported()) {
    const cpu::Bf16Dot before = cpu::bf16_dot();
    CHECK_THROWS_WITH(cpu::set_bf16_dot(cpu::Bf16Dot::bf16), Catch::Contains("lacks AVX512-BF16"));
    CHECK(cpu::bf16_dot() == before);
  }
  FASTINFER_REQUIRE_BF16_DOT();
  const std::string ran = testing::at_every_cpu_level([&](cpu::CpuLevel level) {
    for (DType dt : testing::kFloatTypes)
      for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{37, 100}, {64, 259}}) {
        const auto w = random_matrix(dt, rows, cols, seed++);
        const std::int64_t nmax = 32;
        const auto x = random_floats(std::size_t(nmax * cols), seed++);
        std::vector<float> widen(std::size_t(nmax * rows)), pairs(widen.size());
        {
          cpu::Bf16DotScope mode(cpu::Bf16Dot::widen);
          for (std::int64_t t = 0; t < nmax; ++t)
            cpu::matvec(w.view, x.data() + t * cols, widen.data() + t * rows, 2);
        }
        cpu::Bf16DotScope mode(cpu::Bf16Dot::bf16);
        for (std::int64_t t = 0; t < nmax; ++t)
          cpu::matvec(w.view, x.data() + t * cols, pairs.data() + t * rows, 2);
        const bool takes_pairs = dt == DType::BF16 && level >= cpu::CpuLevel::avx512;
        INFO(dtype_name(dt) << " " << rows << "x" << cols);
        CHECK(cpu::bf16_dot_active(level) == (level >= cpu::CpuLevel::avx512));
        if (!takes_pairs) {
          REQUIRE(std::memcmp(pairs.data(), widen.data(), pairs.size() * sizeof(float)) == 0);
        } else if (level >= cpu::CpuLevel::amx) {
          // AMX tiles (test_gemm_amx holds them to their bound): not the vdpbf16ps order.
          CHECK(std::memcmp(pairs.data(), widen.data(), pairs.size() * sizeof(float)) != 0);
        } else {
          const auto xb = rounded(x.data(), nmax * cols);
          for (std::int64_t t = 0; t < nmax; ++t)
            for (std::int64_t r = 0; r < rows; ++r)
              REQUIRE(same_bits(
                  pairs[std::size_t(t * rows + r)],
                  cpu::scalar::bf16_pair_dot(reinterpret_cast<const std::uint16_t*>(w.view.row_ptr(r)),
                                             xb.data() + t * cols, cols)));
        }
        for (std::int64_t n : {2, 5, 6, 13, 32}) {  // batch invariance through the threaded entry points
          std::vector<float> y(std::size_t(n * rows), NAN);
          cpu::matmul(w.view, x.data(), n, y.data(), 2);
          INFO("n " << n);
          REQUIRE(std::memcmp(y.data(), pairs.data(), y.size() * sizeof(float)) == 0);
        }
        if (takes_pairs) {  // past 32 rows too: the mode's tiles serve every pass size
          const std::int64_t n = 3 * nmax + 5;
          std::vector<float> xs(std::size_t(n * cols)), y(std::size_t(n * rows), NAN);
          for (std::int64_t t = 0; t < n; ++t)
            std::copy(x.begin() + (t % nmax) * cols, x.begin() + (t % nmax + 1) * cols,
                      xs.begin() + t * cols);
          cpu::matmul(w.view, xs.data(), n, y.data(), 2);
          for (std::int64_t t = 0; t < n; ++t) {
            INFO("n " << n << " token " << t);
            REQUIRE(std::memcmp(y.data() + t * rows, pairs.data() + (t % nmax) * rows,
                                sizeof(float) * rows) == 0);
          }
        }
      }
  });
  WARN("bf16 dot mode ran at cpu levels: " << ran);
}

TEST_CASE(
    "a bf16 model in the bf16 mode: decode equals a pass, and the logits stay near the widening kernels'") {
  FASTINFER_REQUIRE_BF16_DOT();
  FASTINFER_REQUIRE_SHARED(model_dir, "models/tinystories-656k");
  FASTINFER_REQUIRE_SHARED(cases_dir, "golden/tinystories-656k/cases");
  LoadOptions o;
  o.weight_dtype = DType::BF16;
  LlamaModel<> model(load_model(model_dir.string(), o), ModelOptions{2, 64});
  const int V = model.config().vocab_size;
  // At avx512 the vdpbf16ps tiles, at amx the AMX tiles (every pass size).
  for (cpu::CpuLevel level : cpu::supported_cpu_levels()) {
    if (level < cpu::CpuLevel::avx512) continue;
    cpu::CpuLevelScope level_scope(level);
    INFO("cpu level " << cpu::cpu_level_name(level));
    LogitsAgreement agreement;
    std::int64_t rows = 0;
    for (const auto& c : testing::read_golden_cases(cases_dir)) {
      const std::vector<std::int32_t> seq = c.sequence();
      const int p = int(c.prompt.size());
      const int n = std::min<int>(24, int(seq.size()) - p);
      if (n < 2) continue;
      // Logits of positions p .. p + n - 1: decoded one token at a time (each
      // mode), then in passes of 5 (bf16 mode).
      auto decoded = [&](cpu::Bf16Dot m) {
        cpu::Bf16DotScope mode(m);
        std::vector<float> out(std::size_t(n) * std::size_t(V));
        model.reset();
        model.forward_prefill(seq.data(), p, 0);
        for (int i = 0; i < n; ++i) {
          const float* l = model.forward_decode(seq[std::size_t(p + i)], p + i);
          std::copy(l, l + V, out.begin() + std::ptrdiff_t(i) * V);
        }
        return out;
      };
      const auto widen = decoded(cpu::Bf16Dot::widen), pairs = decoded(cpu::Bf16Dot::bf16);
      cpu::Bf16DotScope mode(cpu::Bf16Dot::bf16);
      std::vector<float> passes(pairs.size());
      model.reset();
      model.forward_prefill(seq.data(), p, 0);
      for (int i = 0; i < n; i += 5) {
        const int m = std::min(5, n - i);
        model.forward_prefill_all(seq.data() + p + i, m, p + i, passes.data() + std::ptrdiff_t(i) * V);
      }
      INFO("case " << c.name);
      REQUIRE(std::memcmp(passes.data(), pairs.data(), pairs.size() * sizeof(float)) == 0);
      CHECK(widen != pairs);  // the mode ran: rounding the activations moves some logit
      for (int i = 0; i < n; ++i)
        agreement.add(widen.data() + std::ptrdiff_t(i) * V, pairs.data() + std::ptrdiff_t(i) * V, V);
      rows += n;
    }
    REQUIRE(rows > 0);
    // Measured on Zen 4 (the golden prompts' first 24 continuation positions):
    // see docs/backend_cpu.md. The bounds hold the measured numbers with room.
    WARN("bf16 activations against widening at "
         << cpu::cpu_level_name(level) << ", tinystories-656k bf16 weights, " << rows
         << " positions: mean KL " << agreement.mean_kl() << ", top-1 agreement "
         << agreement.top1_agreement());
    CHECK(agreement.top1_agreement() >= 0.95);
    CHECK(agreement.mean_kl() < 1e-3);
  }
}
