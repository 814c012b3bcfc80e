// What the CUDA tests share (tests/backend/cuda/): the skip without a
// device, host <-> device copies of test data, and StorePair, which drives
// a CPU and a CUDA KV store through the same verbs with the same K, V and
// queries and compares what attention returns.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "fastinfer/backend/cuda/cuda_backend.cuh"
#include "fastinfer/kv/kv_store.hpp"

// Skips the case, visibly, when no CUDA device is present.
#define FASTINFER_REQUIRE_CUDA()                              \
  if (::fastinfer::cuda::device_count() == 0) {               \
    std::printf("FASTINFER_SKIP: skipped: no CUDA device\n"); \
    WARN("FASTINFER_SKIP: skipped: no CUDA device");          \
    return;                                                   \
  }

namespace fastinfer::testing {

// A host array on the device (the backend's own buffer type).
template <typename T>
cuda::DeviceBuffer<T> to_device(CudaBackend& gpu, const std::vector<T>& host) {
  cuda::DeviceBuffer<T> d(host.size());
  cuda::copy_to_device(d.data(), host.data(), host.size(), gpu.stream());
  return d;
}
template <typename T>
std::vector<T> to_host(CudaBackend& gpu, const cuda::DeviceBuffer<T>& d, std::size_t n) {
  std::vector<T> h(n);
  cuda::copy_to_host(h.data(), d.data(), n, gpu.stream());
  return h;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

struct StorePair {
  std::unique_ptr<KVStore> cpu, gpu;
  CudaBackend* backend;
  int n_layers, n_kv, n_q, d;
  std::mt19937 rng{11};
  // Reshapes each step's K or V ([tokens][n_kv][d], uniform in [-1, 1])
  // before both stores get it; none by default.
  std::function<void(std::vector<float>&)> shape{};

  std::vector<float> rand(std::size_t n) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = u(rng);
    return v;
  }
  // Room for counts[i] new tokens of seqs[i], then their K and V in every layer.
  void grow(const std::vector<SeqId>& seqs, const std::vector<std::int64_t>& counts) {
    std::vector<ReserveRequest> reqs;
    for (std::size_t i = 0; i < seqs.size(); ++i) reqs.push_back(ReserveRequest{seqs[i], counts[i]});
    REQUIRE(cpu->extend_all(reqs));
    REQUIRE(gpu->extend_all(reqs));
    std::vector<std::int32_t> qo(1, 0);
    for (std::int64_t c : counts) qo.push_back(qo.back() + std::int32_t(c));
    const std::int64_t row = std::int64_t(n_kv) * d;
    for (int l = 0; l < n_layers; ++l) {
      auto k = rand(std::size_t(qo.back() * row)), v = rand(k.size());
      if (shape) shape(k), shape(v);
      // The CPU store one sequence at a time (the reference); the GPU's
      // batched append_rows on even layers, append per sequence on odd ones.
      for (std::size_t i = 0; i < seqs.size(); ++i)
        cpu->append(l, seqs[i], k.data() + qo[i] * row, v.data() + qo[i] * row, counts[i]);
      auto dk = to_device(*backend, k), dv = to_device(*backend, v);
      if (l % 2 == 0) {
        gpu->append_rows(l, seqs, qo.data(), dk.data(), dv.data(), row);
      } else {
        for (std::size_t i = 0; i < seqs.size(); ++i)
          gpu->append(l, seqs[i], dk.data() + qo[i] * row, dv.data() + qo[i] * row, counts[i]);
      }
    }
  }
  // Attention of the last counts[i] tokens of every sequence, every layer.
  void compare(const std::vector<SeqId>& seqs, const std::vector<std::int64_t>& counts,
               const std::vector<std::uint8_t>& mask, bool decode) {
    std::vector<std::int32_t> qo(1, 0);
    for (std::int64_t c : counts) qo.push_back(qo.back() + std::int32_t(c));
    cpu->prepare(seqs, decode, 1);
    gpu->prepare(seqs, decode, 1);
    for (int l = 0; l < n_layers; ++l) {
      const auto q = rand(std::size_t(qo.back()) * std::size_t(n_q * d));
      std::vector<float> ref(q.size());
      const std::uint8_t* m = mask.empty() ? nullptr : mask.data();
      cpu->attend(l, q.data(), qo.data(), m, ref.data(), n_q, 1);
      auto dq = to_device(*backend, q);
      auto dout = backend->allocate<float>(q.size());
      gpu->attend(l, dq.data(), qo.data(), m, dout.data(), n_q, 1);
      INFO("layer " << l);
      CHECK(max_abs_diff(to_host(*backend, dout, q.size()), ref) <= 2e-5);
    }
  }
  // The attention scenario of the CUDA store tests, attention compared after
  // each step: sequences 1, 2, 3 through a causal prefill (the long one
  // makes decode split its keys; `after_prefill` runs then), a decode step,
  // a token tree on 1 with a causal run on 2, then rollback and a fork of 1
  // into 4 (copy-on-write of the shared last block) and a step of both.
  void attention_scenario(const std::function<void()>& after_prefill = {}) {
    for (SeqId s : {1, 2, 3}) {
      REQUIRE(cpu->add_sequence(s));
      REQUIRE(gpu->add_sequence(s));
    }
    grow({1, 2, 3}, {5, 40, 1100});
    compare({1, 2, 3}, {5, 40, 1100}, {}, false);
    if (after_prefill) after_prefill();
    grow({1, 2, 3}, {1, 1, 1});
    compare({1, 2, 3}, {1, 1, 1}, {}, true);
    // Rows 1 and 2 of sequence 1 are children of its row 0.
    grow({1, 2}, {3, 2});
    const std::vector<std::uint8_t> mask = {1, 0, 0, 1, 1, 0, 1, 0, 1, /* seq 2 */ 1, 0, 1, 1};
    compare({1, 2}, {3, 2}, mask, false);
    cpu->truncate(1, 7);
    gpu->truncate(1, 7);
    cpu->fork(1, 4);
    gpu->fork(1, 4);
    grow({1, 4}, {1, 2});
    compare({1, 4}, {1, 2}, {}, false);
  }
};

}  // namespace fastinfer::testing
