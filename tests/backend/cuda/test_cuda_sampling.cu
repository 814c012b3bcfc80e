// Sampling on the device (backend/cuda/sampling.cuh) against the CPU
// sampler (backend/cpu/sampling.hpp). Without a CUDA device every case
// prints "FASTINFER_SKIP: skipped: no CUDA device" and CTest reports it
// skipped (label cuda).
//
// What must hold:
//   chosen coins on small rows whose answer is known (greedy ties, the
//   top-k tie rule, a top-p cut, masked tokens, the draw's strict ">")   exact
//   CudaBackend::sample_rows against cpu::sample_at_index (same Philox
//   coins), random rows and every filter: the same token wherever the
//   coin, and the top-p target, are more than 5e-7 of the kept total from a
//   boundary between two tokens' cumulative weights (the device sums expf
//   in fixed point, the CPU its own vector exp in double: a few float
//   ulps of one weight apart at most), and at least 95 % of the draws are
//   that far
//   CudaBackend::accept_rows (the exact rule's pick at a one-hot draft)
//   against CpuBackend::accept_rows on the same coins: the same token
//   wherever the acceptance coin is more than 5e-7 from p(draft) and the
//   draws are that far from a boundary, as above
//   the refusals (NaN, +inf, every logit -inf)                            the CPU's messages,
//                                                                         no token written
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "cuda_store_pair.cuh"
#include "fastinfer/backend/cpu/cpu_backend.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/backend/cuda/cuda_backend.cuh"
#include "fastinfer/backend/cuda/sampling.cuh"

using namespace fastinfer;
using fastinfer::testing::to_device;
using fastinfer::testing::to_host;

namespace {

// Tokens for `requests` over the rows of `logits` through the kernel itself.
std::vector<cuda::RowSample> device_samples(CudaBackend& gpu, const std::vector<float>& logits,
                                            std::int64_t vocab,
                                            const std::vector<cuda::SampleRequest>& requests) {
  auto d_logits = to_device(gpu, logits);
  auto d_requests = to_device(gpu, requests);
  cuda::DeviceBuffer<cuda::RowSample> out(requests.size());
  cuda::sample_rows(d_logits.data(), vocab, d_requests.data(), std::int64_t(requests.size()), out.data(),
                    gpu.stream());
  return to_host(gpu, out, requests.size());
}

cuda::SampleRequest request(std::int32_t row, float temperature, int top_k, float top_p, float coin) {
  return {row, temperature == 0.0f ? 0.0f : 1.0f / temperature, top_k, top_p, coin};
}

// How far, as a fraction of the kept total, the CPU's decision points lie
// from a boundary: the draw's target coin * total from every cumulative
// weight of the kept set (id order), and top-p's target top_p * total from
// every prefix sum of the top-k set (best first). Double precision, from the
// scalar reference's weights.
double top_p_margin(const float* logits, std::int64_t vocab, const SamplingParams& p) {
  if (p.temperature == 0.0f || p.top_p == 1.0f) return 1.0;
  SamplingParams top_k_only = p;
  top_k_only.top_p = 1.0f;
  std::vector<double> w = cpu::reference::sampling_weights(logits, vocab, top_k_only);
  std::sort(w.begin(), w.end(), std::greater<double>());
  double total = 0, cum = 0, margin = 1.0;
  for (double x : w) total += x;
  for (double x : w) {
    cum += x;
    margin = std::min(margin, std::fabs(cum - double(p.top_p) * total) / total);
  }
  return margin;
}
double draw_margin(const std::vector<double>& w, float coin) {
  double total = 0, cum = 0, margin = 1.0;
  for (double x : w) total += x;
  for (double x : w) {
    if (x == 0.0) continue;
    cum += x;
    margin = std::min(margin, std::fabs(cum - double(coin) * total) / total);
  }
  return margin;
}
double boundary_margin(const float* logits, std::int64_t vocab, const SamplingParams& p, float coin) {
  if (p.temperature == 0.0f) return 1.0;
  return std::min(top_p_margin(logits, vocab, p),
                  draw_margin(cpu::reference::sampling_weights(logits, vocab, p), coin));
}
// The same for the exact rule's pick at a draft: top-p's target, the
// acceptance test (accept_coin against p(draft)) and, when the draft is
// rejected, the residual's draw.
double exact_pick_margin(const float* logits, std::int64_t vocab, const SamplingParams& p, std::int32_t draft,
                         float accept_coin, float residual_coin) {
  if (p.temperature == 0.0f) return 1.0;
  double margin = top_p_margin(logits, vocab, p);
  std::vector<double> w = cpu::reference::sampling_weights(logits, vocab, p);
  if (draft >= 0) {
    double total = 0;
    for (double x : w) total += x;
    const double pd = w[std::size_t(draft)] / total;
    margin = std::min(margin, std::fabs(double(accept_coin) - pd));
    if (double(accept_coin) < pd) return margin;  // kept
    w[std::size_t(draft)] = 0.0;
    if (std::all_of(w.begin(), w.end(), [](double x) { return x == 0.0; }))
      return margin;  // kept: empty residual
  }
  return std::min(margin, draw_margin(w, residual_coin));
}

}  // namespace

TEST_CASE("cuda: sample_rows_kernel on rows whose token is known", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  const float inf = std::numeric_limits<float>::infinity();
  const std::int64_t vocab = 6;
  // Row 0: a three-way tie for the maximum (ids 1, 2, 3), weights 1 each at T 1.
  // Row 1: masked tokens around two finite ones (ids 2 and 4), equal.
  // Row 2: one clear maximum (id 4) and a -0 / +0 pair (ids 0 and 5).
  const std::vector<float> logits = {1,     3,    3,    3,    0,    -2,    //
                                     -inf,  -inf, 0.5f, -inf, 0.5f, -inf,  //
                                     -0.0f, -1,   -1,   -1,   9,    0.0f};
  const std::vector<cuda::SampleRequest> requests = {
      request(0, 0.0f, 0, 1.0f, 0.9f),     // greedy: the first maximum
      request(0, 1.0f, 2, 1.0f, 0.0f),     // top-k 2 keeps ids 1 and 2 (ties to the lower id): coin 0 -> 1
      request(0, 1.0f, 2, 1.0f, 0.49f),    // ... below half of the kept weight -> 1
      request(0, 1.0f, 2, 1.0f, 0.5f),     // ... exactly half: the draw needs ">" -> 2
      request(0, 1.0f, 2, 1.0f, 0.99f),    // ... -> 2, never 3
      request(0, 1.0f, 1, 1.0f, 0.99f),    // top-k 1: the first maximum
      request(0, 1.0f, 0, 0.3f, 0.99f),    // top-p: id 1 alone (weight 1 of ~3.19) already reaches 0.3
      request(0, 1.0f, 0, 0.5f, 0.99f),    // ... 0.5 needs ids 1 and 2 -> 2 at a high coin
      request(1, 1.0f, 0, 1.0f, 0.999f),   // masked ids are never drawn: the last finite one
      request(1, 1.0f, 0, 1.0f, 0.0f),     // ... and the first
      request(1, 1.0f, 5, 1.0f, 0.999f),   // top-k past the finite ones keeps masked ones at weight 0
      request(2, 1e-3f, 0, 1.0f, 0.999f),  // a cold temperature: the maximum
      request(2, 1.0f, 2, 1.0f, 0.0f),     // top-k 2: 9 and the first of the zeros (-0 at id 0, ties
                                           // to the lower id), drawn first in id order at coin 0
      request(2, 1.0f, 0, 1e-6f, 0.999f),  // a tiny top-p keeps one token, the maximum
  };
  const std::vector<std::int32_t> expected = {1, 1, 1, 2, 2, 1, 1, 2, 4, 2, 4, 4, 0, 4};
  const std::vector<cuda::RowSample> got = device_samples(gpu, logits, vocab, requests);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    CAPTURE(i);
    CHECK(got[i].token == expected[i]);
    CHECK(got[i].has_nan == 0);
  }
  // Row 2, top-k 2: id 0 holds e^-9 / (1 + e^-9) of the kept weight, so any
  // coin above that draws the 9 at id 4.
  CHECK(device_samples(gpu, logits, vocab, {request(2, 1.0f, 2, 1.0f, 0.001f)})[0].token == 4);
}

TEST_CASE("cuda: sample_rows draws the CPU sampler's tokens away from boundaries", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  std::mt19937 rng(2026);
  // Vocabularies below, at and across the block's 512 threads and real ones.
  for (const std::int64_t vocab : {1, 7, 511, 512, 513, 1000, 32000, 50001}) {
    CAPTURE(vocab);
    const std::int64_t n_rows = 4;
    std::vector<float> logits(std::size_t(n_rows * vocab));
    // Flat, peaked (a few logits far above the rest), tied and masked rows.
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (std::int64_t r = 0; r < n_rows; ++r)
      for (std::int64_t i = 0; i < vocab; ++i) {
        float& x = logits[std::size_t(r * vocab + i)];
        x = normal(rng);
        if (r == 1) x *= 6.0f;
        if (r == 2) x = std::round(x * 2.0f);
        if (r == 3 && i % 3 == 1) x = -std::numeric_limits<float>::infinity();
      }
    auto d = to_device(gpu, logits);
    const std::vector<float> temperatures = {0.0f, 0.7f, 1.0f, 1.5f};
    const std::vector<int> top_ks = {0, 1, 5, 40};
    const std::vector<float> top_ps = {1.0f, 0.9f, 0.5f};
    std::vector<std::int32_t> rows;
    std::vector<SamplingParams> params;
    std::vector<std::uint64_t> indices;
    for (std::int64_t r = 0; r < n_rows; ++r)
      for (float t : temperatures)
        for (int k : top_ks)
          for (float p : top_ps)
            for (std::uint64_t index : {0u, 1u, 77u}) {
              rows.push_back(std::int32_t(r));
              params.push_back(SamplingParams{t, k, p, 9000 + std::uint64_t(r)});
              indices.push_back(index);
            }
    std::vector<std::int32_t> tokens(rows.size(), -1);
    gpu.sample_rows(d.data(), vocab, rows.data(), std::int64_t(rows.size()), params.data(), indices.data(),
                    tokens.data());
    cpu::SamplerWorkspace ws;
    std::size_t compared = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const float* row = logits.data() + std::int64_t(rows[i]) * vocab;
      const float coin = uniform_float(params[i].seed, RandomStream::Sampling, indices[i]);
      if (boundary_margin(row, vocab, params[i], coin) <= 5e-7) continue;
      ++compared;
      CAPTURE(i, rows[i], params[i].temperature, params[i].top_k, params[i].top_p, indices[i]);
      CHECK(tokens[i] == cpu::sample_at_index(row, vocab, params[i], indices[i], ws));
    }
    CHECK(double(compared) >= 0.95 * double(rows.size()));
  }
}

TEST_CASE("cuda: sample_rows refuses the CPU's bad rows and writes no token", "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  const std::int64_t vocab = 700;
  const std::int32_t rows[2] = {0, 1};
  const SamplingParams params[2] = {{0.8f, 0, 1.0f, 1}, {0.0f, 0, 1.0f, 2}};
  const std::uint64_t indices[2] = {3, 4};
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> host(std::size_t(2 * vocab));
    for (float& x : host) x = u(rng);
    host[std::size_t(vocab + 699)] = bad;
    auto d = to_device(gpu, host);
    std::int32_t tokens[2] = {-1, -1};
    CHECK_THROWS_WITH(gpu.sample_rows(d.data(), vocab, rows, 2, params, indices, tokens),
                      Catch::Contains(std::isnan(bad) ? "logits contain NaN" : "logits contain +inf"));
    CHECK((tokens[0] == -1 && tokens[1] == -1));
  }
  std::vector<float> host(std::size_t(vocab), -std::numeric_limits<float>::infinity());
  auto d = to_device(gpu, host);
  std::int32_t token = -1;
  CHECK_THROWS_WITH(gpu.sample_rows(d.data(), vocab, rows, 1, params, indices, &token),
                    Catch::Contains("every logit is -inf"));
  CHECK(token == -1);
  const SamplingParams bad_top_p{0.8f, 0, 1.5f, 1};
  CHECK_THROWS_WITH(gpu.sample_rows(d.data(), vocab, rows, 1, &bad_top_p, indices, &token),
                    Catch::Contains("top_p must be in (0, 1]"));
}

TEST_CASE("cuda: accept_rows keeps and rejects drafts as the CPU backend does away from boundaries",
          "[cuda]") {
  FASTINFER_REQUIRE_CUDA();
  CudaBackend gpu;
  CpuBackend cpu_backend;
  std::mt19937 rng(77);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (const std::int64_t vocab : {7, 513, 32000}) {
    CAPTURE(vocab);
    const std::int64_t n_rows = 3;
    std::vector<float> logits(std::size_t(n_rows * vocab));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (std::int64_t r = 0; r < n_rows; ++r)
      for (std::int64_t i = 0; i < vocab; ++i) {
        float& x = logits[std::size_t(r * vocab + i)];
        x = normal(rng) * (r == 1 ? 6.0f : 1.0f);  // row 1 peaked: its argmax is often kept
        if (r == 2 && i % 3 == 1) x = -std::numeric_limits<float>::infinity();
      }
    auto d = to_device(gpu, logits);
    std::vector<std::int32_t> rows, drafts;
    std::vector<SamplingParams> params;
    std::vector<float> accept, residual;
    for (std::int64_t r = 0; r < n_rows; ++r) {
      const std::int32_t best = cpu::argmax_token(logits.data() + r * vocab, vocab);
      for (float t : {0.0f, 0.7f, 1.5f})
        for (int k : {0, 5})
          for (float p : {1.0f, 0.9f})
            // The row's argmax, any token, a masked one (row 2: id 1), none (the bonus row).
            for (std::int32_t draft :
                 {best, std::int32_t(rng() % vocab), std::int32_t(vocab > 1 ? 1 : 0), -1})
              for (int coins = 0; coins < 4; ++coins) {
                rows.push_back(std::int32_t(r));
                params.push_back(SamplingParams{t, k, p, 0});
                drafts.push_back(draft);
                accept.push_back(std::min(uniform(rng), std::nextafter(1.0f, 0.0f)));
                residual.push_back(std::min(uniform(rng), std::nextafter(1.0f, 0.0f)));
              }
    }
    const std::int64_t n = std::int64_t(rows.size());
    std::vector<std::int32_t> got(rows.size(), -1), want(rows.size(), -1);
    gpu.accept_rows(d.data(), vocab, rows.data(), n, params.data(), drafts.data(), accept.data(),
                    residual.data(), got.data());
    cpu_backend.accept_rows(logits.data(), vocab, rows.data(), n, params.data(), drafts.data(), accept.data(),
                            residual.data(), want.data());
    std::size_t compared = 0, kept = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const float* row = logits.data() + std::int64_t(rows[i]) * vocab;
      if (exact_pick_margin(row, vocab, params[i], drafts[i], accept[i], residual[i]) <= 5e-7) continue;
      ++compared;
      kept += drafts[i] >= 0 && want[i] == drafts[i] ? 1 : 0;
      CAPTURE(i, rows[i], params[i].temperature, params[i].top_k, params[i].top_p, drafts[i], accept[i]);
      CHECK(got[i] == want[i]);
    }
    CHECK(double(compared) >= 0.95 * double(rows.size()));
    CHECK(kept > 0);
  }
}
