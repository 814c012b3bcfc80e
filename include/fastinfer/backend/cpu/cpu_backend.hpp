// CpuBackend: the Backend (backend/backend.hpp) over this directory's
// kernels. Buffers are host vectors; every kernel is today's cpu:: function,
// called exactly as the model called it before the seam existed, so results
// are bit-for-bit those of the kernels' own tests.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

#include "fastinfer/backend/backend.hpp"
#include "fastinfer/backend/cpu/kernels.hpp"
#include "fastinfer/backend/cpu/kv_store.hpp"
#include "fastinfer/backend/cpu/sampling.hpp"
#include "fastinfer/core/error.hpp"
#include "fastinfer/core/rejection_sampling.hpp"
#include "fastinfer/core/sampling_params.hpp"
#include "fastinfer/core/tensor.hpp"

namespace fastinfer {

class CpuBackend {
 public:
  static constexpr std::string_view kName = "cpu";
  static constexpr bool kHostVisible = true;

  // A bad kernel-mode variable (FASTINFER_CPU_LEVEL, ...) is refused here.
  CpuBackend() { cpu::check_kernel_modes(); }

  // n elements of host memory, zero-filled.
  template <typename T>
  class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(std::size_t n) : v_(n, T{}) {}
    T* data() { return v_.data(); }
    const T* data() const { return v_.data(); }
    std::size_t size() const { return v_.size(); }

   private:
    std::vector<T> v_;
  };

  template <typename T>
  Buffer<T> allocate(std::size_t n) {
    return Buffer<T>(n);
  }
  void to_host(const float* src, std::size_t n, float* host) {
    if (src != host) std::memcpy(host, src, sizeof(float) * n);
  }

  // Weights are read in place (a memory map or the loader's heap buffers),
  // except Q8_0 matrices where the current level runs the grouped AVX512-VNNI
  // or AMX-INT8 kernels: those are regrouped into the backend's own buffer
  // (q8_0_grouped.hpp; the rows they came from are no longer read). Set the
  // CPU level before loading.
  MatrixView upload(const MatrixView& w, std::vector<KeepAlive>& storage) {
    if (w.dtype != DType::Q8_0 || w.layout != MatrixLayout::rows || !cpu::q8_0::regroups_weights()) return w;
    std::shared_ptr<std::uint8_t> grouped;
    const MatrixView view = cpu::q8_0::regroup_matrix(w, grouped, threads_);
    storage.push_back(std::move(grouped));
    return view;
  }

  void set_threads(int threads) {
    FASTINFER_CHECK(threads >= 1, InvalidArgument, "threads must be at least 1, got ", threads);
    threads_ = threads;
  }
  int threads() const { return threads_; }

  void embed(const MatrixView& table, const std::int32_t* tokens, std::int64_t n, float* out) {
    for (std::int64_t t = 0; t < n; ++t) cpu::load_matrix_row(table, tokens[t], out + t * table.cols);
  }

  // One matrix-vector product for a single row, a matrix product for more.
  void linear(const MatrixView& w, const float* x, std::int64_t n, float* y) {
    if (n == 1)
      cpu::matvec(w, x, y, threads_);
    else
      cpu::matmul(w, x, n, y, threads_);
  }

  void rmsnorm(float* out, const float* x, const std::int32_t* rows, std::int64_t n, const float* weight, int dim,
               float eps) {
    for (std::int64_t i = 0; i < n; ++i)
      cpu::rmsnorm(out + i * dim, x + (rows ? std::int64_t(rows[i]) : i) * dim, weight, dim, eps);
  }

  void rope(float* x, std::int64_t n, int heads, int head_dim, const std::int64_t* positions, float theta,
            RopeStyle style) {
    const std::int64_t row = std::int64_t(heads) * head_dim;
    for (std::int64_t t = 0; t < n; ++t) cpu::rope(x + t * row, heads, head_dim, int(positions[t]), theta, style);
  }

  void swiglu(float* gate, const float* up, std::int64_t n) { cpu::swiglu(gate, up, n); }
  void add(float* y, const float* x, std::int64_t n) { cpu::add(y, x, n); }

  void copy_rows(float* dst, std::int64_t dst_stride, const float* src, std::int64_t src_stride, std::int64_t rows,
                 int width) {
    for (std::int64_t r = 0; r < rows; ++r)
      std::memcpy(dst + r * dst_stride, src + r * src_stride, sizeof(float) * std::size_t(width));
  }

  std::unique_ptr<KVStore> make_kv_store(const KVOptions& options, const kv::KVCacheConfig& config) {
    return cpu::make_kv_store(options, config);
  }

  // The host sampler's functions (backend/cpu/sampling.hpp) row by row: the
  // tokens are those a caller picking from the same host rows would get.
  // Like the CUDA backend, a bad row (NaN logits, bad parameters) throws
  // before any token is written: the picks go to scratch first.
  void argmax_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   std::int32_t* tokens) {
    picks_.resize(std::size_t(std::max<std::int64_t>(n, 0)));
    for (std::int64_t i = 0; i < n; ++i)
      picks_[std::size_t(i)] = cpu::argmax_token(logits + std::int64_t(rows[i]) * vocab, vocab);
    std::copy(picks_.begin(), picks_.end(), tokens);
  }
  void sample_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   const SamplingParams* params, const std::uint64_t* token_indices, std::int32_t* tokens) {
    picks_.resize(std::size_t(std::max<std::int64_t>(n, 0)));
    for (std::int64_t i = 0; i < n; ++i)
      picks_[std::size_t(i)] = sampler_.sample_at_index(logits + std::int64_t(rows[i]) * vocab, vocab,
                                                        params[i], token_indices[i]);
    std::copy(picks_.begin(), picks_.end(), tokens);
  }
  // The exact rule's pick per row (backend.hpp's optional verb) with the
  // host verifier's arithmetic: its distribution, then
  // rejection::exact_pick, so the tokens are verify_rejection's.
  void accept_rows(const float* logits, std::int64_t vocab, const std::int32_t* rows, std::int64_t n,
                   const SamplingParams* params, const std::int32_t* drafts, const float* accept_coins,
                   const float* residual_coins, std::int32_t* tokens) {
    detail::check_logits_size(vocab);
    probs_.resize(std::size_t(vocab));
    picks_.resize(std::size_t(std::max<std::int64_t>(n, 0)));
    for (std::int64_t i = 0; i < n; ++i) {
      FASTINFER_CHECK(drafts[i] < vocab, InvalidArgument, "accept_rows: draft token ", drafts[i],
                      " is outside the vocabulary [0, ", vocab, ")");
      detail::check_coin(accept_coins[i]);
      sampler_.distribution(logits + std::int64_t(rows[i]) * vocab, vocab, params[i], probs_.data());
      picks_[std::size_t(i)] = rejection::exact_pick(probs_.data(), nullptr, drafts[i], int(vocab),
                                                     accept_coins[i], residual_coins[i], sampler_, residual_);
    }
    std::copy(picks_.begin(), picks_.end(), tokens);
  }

 private:
  int threads_ = 1;
  cpu::HostSampler sampler_;             // its workspace grows once to the vocabulary
  std::vector<float> probs_, residual_;  // accept_rows' row and its residual
  std::vector<std::int32_t> picks_;      // the row verbs' tokens until every row passed
};

static_assert(check_backend<CpuBackend>());

}  // namespace fastinfer
